// The admin page's state, in one place: what the admin API answered, how the members tables
// are viewed, the Enable flow, the purchase waiting for its confirmation and the limit
// dialog's pending change. Panels read and change it; `page.load()` reloads it from the API
// and `page.render()` redraws every panel from it (both set by admin.js).
export const TOKEN = "eup-admin-token";

export const state = {
  me: null,          // who the token acts for
  settings: null,    // GET …/extra-usage
  usage: null,       // GET …/usage: the month to date, per member, with what binds
  requests: [],      // Enterprise: extra usage requests
  audit: [],         // the newest audit entries, in the API's words
  credits: [],       // Team: purchases and confirmed reloads (the ledger, and the audit log's newest)
  creditsPartial: false,  // the ledger could not be read: only the audit log's recent credits
  daily: null,       // GET …/usage/daily, or null with dailyError when the ledger is down
  dailyError: "",
  // the members tables: search, sort, page, the selection changed at once
  view: { q: "", sort: "name", page: 0, selected: new Set() },
  // the Enable dialog's steps
  flow: { steps: [], at: 0, bought: false, buyKey: null, confirming: false },
  pendingPurchase: null,  // a purchase shown for confirmation, not yet sent
  onLimit: null,          // what "Set limit" in the limit dialog does
};

export const page = {
  render() {},
  async load() {},
};
