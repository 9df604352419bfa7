// "Admin settings > Usage": plain ES modules, no build step. This module signs the owner in
// (the admin token they paste is kept in sessionStorage, never in a URL), loads the page's
// state from the admin API and draws every panel from it; each panel is a module of
// admin/, its listeners installed once by its init(), the state in admin/state.js, every
// URL built by admin/api.js.
import { ApiError } from "./common.js";
import vocabulary from "/admin/vocabulary.js";
import { adminPath, api, orgPath } from "./admin/api.js";
import * as daily from "./admin/daily.js";
import * as enable from "./admin/enable.js";
import { money, usd } from "./admin/format.js";
import { mergeCredits, renderAudit, renderCredits } from "./admin/history.js";
import * as limit from "./admin/limit.js";
import { renderLimits, renderTeamMembers, spendAgainst } from "./admin/members.js";
import { renderRequests } from "./admin/requests.js";
import * as settings from "./admin/settings.js";
import { TOKEN, page, state } from "./admin/state.js";
import * as statements from "./admin/statements.js";
import { $, canChange, plainWords, showError } from "./admin/ui.js";

const { Plan, Role } = vocabulary;

function render() {
  const s = state.settings;
  const team = s.plan === Plan.TEAM;
  $("who").textContent = `${state.me.org_name} (${s.plan}) · signed in as ${state.me.member_id ?? "operator"}, ${state.me.role.replace("_", " ")}`;
  $("eu-state").textContent = s.enabled ? "Extra usage is on." : "Extra usage is off.";
  $("eu-enable").hidden = s.enabled;
  $("eu-disable").hidden = !s.enabled;
  $("limit-value").textContent = money(s.monthly_limit);
  $("read-only").hidden = canChange();
  statements.fillMonths();
  daily.renderDaily();
  $("member-consent").value = s.member_consent;
  $("requests-toggle").hidden = team;
  if (!team) $("requests-enabled").checked = s.requests_enabled;
  renderAudit();
  $("org-binding").replaceChildren(spendAgainst(state.usage.totals.extra_usage, state.usage.totals.binding));
  $("team-credit").hidden = !team;
  $("team-members").hidden = !team;
  $("tier-limits").hidden = team;
  $("user-limits").hidden = team;
  $("requests").hidden = team;
  if (team) {
    $("balance").textContent = usd(s.balance);
    renderCredits();
    $("reload-enabled").checked = s.auto_reload.enabled;
    $("reload-threshold").value = s.auto_reload.threshold ?? "";
    $("reload-amount").value = s.auto_reload.amount ?? "";
    $("member-scope").value = s.member_scope;
    renderTeamMembers();
  } else {
    renderLimits();
    renderRequests();
  }
  // an admin sees everything and changes nothing; finding, statements and the chart stay open
  for (const el of document.querySelectorAll("#app input, #app select, #app button")) {
    if (!canChange() && !el.closest(".members-tools, #statements, #daily")) el.disabled = true;
  }
}

async function load() {
  state.me = await api("GET", adminPath("me"));
  if (!state.me.org_id) throw new ApiError(400, "The operator token has no organization: sign in with an owner's admin token.");
  if (!Role.MAY_READ.includes(state.me.role)) {
    throw new ApiError(403, `your role (${state.me.role}) cannot view usage settings; ask an owner of ${state.me.org_name}`);
  }
  const [settingsDoc, usage] = await Promise.all([
    api("GET", orgPath("extra-usage")),
    api("GET", orgPath("usage"))]);
  state.settings = settingsDoc;
  state.usage = usage;
  state.requests = settingsDoc.plan === Plan.ENTERPRISE
    ? (await api("GET", orgPath("extra-usage", "requests"))).requests : [];
  state.audit = (await api("GET", orgPath("audit", { limit: 1000 }))).entries;
  try {
    state.daily = await api("GET", orgPath("usage", "daily"));
    state.dailyError = "";
  } catch (err) {
    state.daily = null;
    state.dailyError = plainWords(err);  // the ledger database may be down: the rest works
  }
  state.credits = [];
  state.creditsPartial = false;
  if (settingsDoc.plan === Plan.TEAM) {
    let ledger = null;
    try {
      ledger = (await api("GET", orgPath("extra-usage", "credits", { limit: 200 }))).credits;
    } catch {
      state.creditsPartial = true;  // the ledger database may be down: the audit log's recent ones
    }
    state.credits = mergeCredits(ledger, state.audit);
  }
  render();
  const now = new Date();
  $("updated").textContent = `updated ${String(now.getHours()).padStart(2, "0")}:`
    + `${String(now.getMinutes()).padStart(2, "0")}`;
  $("signin").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
}

async function start() {
  if (!sessionStorage.getItem(TOKEN)) return;
  try { await load(); } catch (err) { $("app").hidden = true; showError(err); }
}

// live: the figures refresh every 30 s and when the tab comes back into focus — not while
// the owner is typing, confirming or in a dialog (a refresh would redraw the controls)
async function refresh() {
  if (!state.me || $("app").hidden || $("limit-dialog").open || $("enable-dialog").open
    || !$("buy-confirm").hidden) return;
  const el = document.activeElement;
  if (el && el.closest("#app") && ["INPUT", "SELECT"].includes(el.tagName)) return;
  try { await load(); } catch (err) { showError(err); }
}

page.render = render;
page.load = load;
for (const panel of [limit, daily, enable, settings, statements]) panel.init();
$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN, $("token").value.trim());
  $("token").value = "";
  showError(null);
  start();
});
$("sign-out").addEventListener("click", () => { sessionStorage.removeItem(TOKEN); location.reload(); });
setInterval(refresh, 30000);
window.addEventListener("focus", refresh);
start();
