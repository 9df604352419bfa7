// "Admin settings > Usage": plain ES module, no build step. Talks to the admin API with the
// admin token the owner pasted (kept in sessionStorage, never in a URL).
import { $, ApiError, apiClient, banners } from "./common.js";

const TOKEN = "eup-admin-token";
const state = { me: null, settings: null, usage: null, requests: [], credits: [], audit: [] };

function plainWords(err) {
  if (err.status === 401) return "Your admin token was not accepted. Sign in again with a valid token.";
  if (err.status === 403) return `You don't have permission to do that: ${err.message}`;
  if (err.status === 404) return `Not found: ${err.message}`;
  if (err.status === 503 && /ledger|database|PostgreSQL/i.test(err.message)) {
    return "Statements come from the ledger database, which cannot be reached right now. Try again in a moment.";
  }
  if (err.status >= 500) return `The service could not complete this right now (${err.message}). Try again in a moment.`;
  return inPlainWords(err.message);
}

const api = apiClient(() => ({ authorization: `Bearer ${sessionStorage.getItem(TOKEN)}` }));
const { showError, notice } = banners(plainWords);

// "1234567.50" -> "$1,234,567.50": the API's decimal string with its integer part grouped,
// never through a float (amounts are exact to the nano-dollar)
function usd(v) {
  const [whole, frac] = String(v).split(".");
  const sign = whole.startsWith("-") ? "-" : "";
  const digits = whole.replace("-", "").replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `${sign}$${digits}${frac === undefined ? "" : "." + frac}`;
}
const money = (v) => (v === null || v === undefined ? "Unlimited" : usd(v));
// nano-USD (a decimal string of an integer, as the audit log keeps it) as the API's USD
// string: at least 2 decimals, exact (BigInt, never a float)
function nanoOf(usdString) {
  const [whole, frac = ""] = String(usdString).replace("-", "").split(".");
  const v = BigInt(whole) * 1000000000n + BigInt(frac.padEnd(9, "0").slice(0, 9));
  return String(usdString).startsWith("-") ? -v : v;
}
function nanoUsd(n) {
  const v = BigInt(n);
  const a = v < 0n ? -v : v;
  let frac = (a % 1000000000n).toString().padStart(9, "0").replace(/0+$/, "");
  if (frac.length < 2) frac = frac.padEnd(2, "0");
  return `${v < 0n ? "-" : ""}${a / 1000000000n}.${frac}`;
}

// what limits a spend now (the admin usage API's "binding"), in an owner's words
const tierName = (t) => t.charAt(0).toUpperCase() + t.slice(1);
function ruleWords(rule, tier) {
  return {
    member_spend_limit: "their own limit",
    seat_tier_spend_limit: `${tierName(tier ?? "")} tier limit`,
    org_spend_limit: "the organization's limit",
    out_of_credits: "the prepaid balance",
    org_level_disabled: "extra usage is off for the organization",
    member_level_disabled: "extra usage is off for this member",
    unlimited: "no limit",
  }[rule] ?? rule;
}

// "$201.60 of $200.00 · Premium tier limit · Reached", with a bar of spend against the limit
function spendAgainst(spent, binding, tier) {
  const box = document.createElement("div");
  box.className = "spend";
  if (!binding) { box.textContent = usd(spent); return box; }
  const off = binding.rule === "org_level_disabled" || binding.rule === "member_level_disabled";
  const text = document.createElement("span");
  if (off) text.textContent = `${usd(spent)} · ${ruleWords(binding.rule, tier)}`;
  else if (binding.effective_limit === null) text.textContent = `${usd(spent)} · no limit`;
  else text.textContent = `${usd(spent)} of ${usd(binding.effective_limit)} · ${ruleWords(binding.rule, tier)}`;
  box.append(text);
  if (binding.effective_limit !== null && !off) {
    const bar = document.createElement("meter");
    bar.min = 0;
    bar.max = Math.max(Number(binding.effective_limit), 1e-9);
    bar.value = Math.min(Number(spent), bar.max);
    // green below 75 %, amber to the limit, red at it
    bar.low = bar.max * 0.75;
    bar.high = bar.max * 0.999;
    bar.optimum = 0;
    bar.setAttribute("aria-label", `${usd(spent)} spent of ${usd(binding.effective_limit)}`);
    box.append(bar);
  }
  if (binding.reached && !off) {
    const badge = document.createElement("strong");
    badge.className = "reached";
    badge.textContent = "Reached";
    box.append(badge);
  }
  return box;
}
const org = () => state.me.org_id;
const canChange = () => ["primary_owner", "owner"].includes(state.me.role);

// the API's field names, in the page's words
const FIELDS = {
  "auto_reload.threshold": "Reload when balance reaches",
  "auto_reload.amount": "Reload amount",
  "auto_reload": "Auto-reload",
  amount: "Amount",
  monthly_limit: "Monthly limit",
};
function inPlainWords(message) {
  const m = /^([\w.]+): (.*)$/.exec(message);
  if (!m || !FIELDS[m[1]]) return message;
  return `${FIELDS[m[1]]}: ${m[2].replace(/\bauto_reload\.amount\b/g, "a reload amount")}`;
}

// a change: its error shown next to its form (``where``: an element after which it goes), or
// in the banner; a failed change puts every control back as the stored state has it
async function act(fn, done, where) {
  showError(null);
  fieldError(null);
  try {
    await fn();
    await load();  // the figures first, then the notice: nothing redraws after it
    if (done) notice(done);
  } catch (err) {
    if (where) { notice(""); fieldError(where, plainWords(err)); } else showError(err);
    if (state.settings) render();  // a ticked box or a changed select goes back
  }
}

function fieldError(where, text) {
  for (const el of document.querySelectorAll(".field-error")) el.remove();
  if (!where) return;
  const p = document.createElement("p");
  p.className = "error field-error";
  p.setAttribute("role", "alert");
  p.textContent = inPlainWords(text);
  where.after(p);
}

// -- the limit dialog: one for the org, the tiers and the members ----------------------------
let onLimit = null;
function openLimitDialog(title, current, apply) {
  $("limit-dialog-title").textContent = title;
  $("limit-amount").value = current ?? "";
  $("limit-error").textContent = "";
  onLimit = apply;
  $("limit-dialog").showModal();
  $("limit-amount").focus();
}

$("limit-form").addEventListener("submit", async (ev) => {
  const choice = ev.submitter?.value;
  if (choice === "cancel") return;
  ev.preventDefault();
  const amount = choice === "unlimited" ? null : $("limit-amount").value.trim();
  if (amount === "") { $("limit-error").textContent = "Enter an amount in USD, such as 500.00."; return; }
  try {
    await onLimit(amount);
    $("limit-dialog").close();
    notice(amount === null ? "Limit set to unlimited." : `Limit set to $${amount}.`);
    await load();
  } catch (err) {
    $("limit-error").textContent = plainWords(err);
  }
});

// -- rendering ------------------------------------------------------------------------------
function pencil(label, title, current, apply) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = "✎";
  b.setAttribute("aria-label", label);
  b.disabled = !canChange();
  b.addEventListener("click", () => openLimitDialog(title, current, apply));
  return b;
}

// a cell, labelled with its column for the phone layout (the table's rows become cards)
function cell(row, text, label) {
  const td = row.insertCell();
  if (text !== undefined && text !== null) td.textContent = text;
  if (label) td.dataset.label = label;
  return td;
}

// a member's seat windows: used against the allowance, and when each resets
const at = (epoch) => new Date(epoch * 1000).toISOString().slice(5, 16).replace("T", " ");
function windowBars(w) {
  const box = document.createElement("div");
  box.className = "windows";
  if (!w) return box;
  for (const [key, label] of [["five_hour", "5-hour"], ["seven_day", "7-day"]]) {
    const x = w[key];
    const line = document.createElement("div");
    const bar = document.createElement("meter");
    bar.min = 0; bar.max = Math.max(Number(x.allowance), 1e-9);
    bar.value = Math.min(Number(x.used), bar.max);
    bar.low = bar.max * 0.75; bar.high = bar.max * 0.999; bar.optimum = 0;
    bar.setAttribute("aria-label", `${label} window: ${usd(x.used)} of ${usd(x.allowance)}`);
    line.append(`${label} ${usd(x.used)} of ${usd(x.allowance)} `, bar,
      x.resets_at ? ` resets ${at(x.resets_at)} UTC` : " not started");
    box.append(line);
  }
  return box;
}

// -- this month's extra usage by day: plain SVG (a few dozen bars need no chart library and
// nothing to download at install time), each day's split by member or model beside it
function renderDaily() {
  const chart = $("daily-chart");
  chart.replaceChildren();
  const days = state.daily?.days ?? [];
  if (state.dailyError) { chart.textContent = state.dailyError; return; }
  if (!days.length) { chart.textContent = "No extra usage this month yet."; }
  const now = new Date();
  const ndays = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 0)).getUTCDate();
  const byDay = Object.fromEntries(days.map((d) => [Number(d.day.slice(8, 10)), d]));
  const top = Math.max(...days.map((d) => Number(d.extra_usage)), 1e-9);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${ndays * 10} 64`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `Extra usage by day this month: ${days.map((d) => `${d.day} ${usd(d.extra_usage)}`).join(", ") || "none"}`);
  svg.classList.add("daily");
  for (let i = 1; i <= ndays; i += 1) {
    const d = byDay[i];
    const h = d ? Math.max(1, (Number(d.extra_usage) / top) * 50) : 0;
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", String((i - 1) * 10 + 1)); rect.setAttribute("width", "8");
    rect.setAttribute("y", String(52 - h)); rect.setAttribute("height", String(h));
    const title = document.createElementNS(ns, "title");
    title.textContent = d ? `${d.day}: ${usd(d.extra_usage)}` : `day ${i}: none`;
    rect.append(title);
    svg.append(rect);
  }
  // the baseline, a day label each week, and the tallest bar's amount
  const text = (x, y, t, anchor = "middle") => {
    const el = document.createElementNS(ns, "text");
    el.setAttribute("x", String(x)); el.setAttribute("y", String(y));
    el.setAttribute("text-anchor", anchor); el.textContent = t;
    svg.append(el);
  };
  const base = document.createElementNS(ns, "line");
  base.setAttribute("x1", "0"); base.setAttribute("x2", String(ndays * 10));
  base.setAttribute("y1", "52.5"); base.setAttribute("y2", "52.5");
  svg.append(base);
  for (const day of [1, 8, 15, 22, 29]) if (day <= ndays) text((day - 1) * 10 + 5, 62, String(day));
  const highest = days.reduce((a, d) => (nanoOf(d.extra_usage) > nanoOf(a.extra_usage) ? d : a), days[0]);
  if (highest) text(0, 7, `highest day ${usd(highest.extra_usage)}`, "start");
  chart.append(svg);
  const split = $("daily-split").value;
  $("daily-split-name").textContent = split === "by_member" ? "Member" : "Model";
  const totals = {};
  for (const d of days) for (const [k, v] of Object.entries(d[split])) totals[k] = (totals[k] ?? 0n) + nanoOf(v);
  const rows = $("daily-split-rows");
  rows.replaceChildren();
  for (const [k, v] of Object.entries(totals).sort((a, b) => (b[1] > a[1] ? 1 : b[1] < a[1] ? -1 : 0))) {
    const r = rows.insertRow();
    cell(r, k, split === "by_member" ? "Member" : "Model"); cell(r, usd(nanoUsd(v)), "Extra usage this month");
  }
}
$("daily-split").addEventListener("change", renderDaily);

// -- many members: search, sort, pages of 50, and changes to a selection at once ----------
const PAGE = 50;
const view = { q: "", sort: "name", page: 0, selected: new Set() };

function visibleMembers() {
  const q = view.q.trim().toLowerCase();
  const all = state.usage.members.filter((m) => !q || m.member_id.toLowerCase().includes(q));
  const spend = (m) => Number(m.extra_usage);
  const by = {
    name: (a, b) => a.member_id.localeCompare(b.member_id),
    spend: (a, b) => spend(b) - spend(a) || a.member_id.localeCompare(b.member_id),
    tier: (a, b) => a.tier.localeCompare(b.tier) || a.member_id.localeCompare(b.member_id),
  }[view.sort];
  all.sort(by);
  const pages = Math.max(1, Math.ceil(all.length / PAGE));
  view.page = Math.min(view.page, pages - 1);
  return { all, pages, page: all.slice(view.page * PAGE, (view.page + 1) * PAGE) };
}

function selectBox(m) {
  const box = document.createElement("input");
  box.type = "checkbox";
  box.checked = view.selected.has(m.member_id);
  box.setAttribute("aria-label", `Select ${m.member_id}`);
  box.addEventListener("change", () => {
    if (box.checked) view.selected.add(m.member_id); else view.selected.delete(m.member_id);
    render();
  });
  return box;
}

function control(tag, props, label) {
  const el = Object.assign(document.createElement(tag), props);
  if (label) el.setAttribute("aria-label", label);
  return el;
}

// the toolbar above a members table: search, sort, pages, select all, the bulk actions
// (``actions``: [label, (member id) => a call] — or null for the limit dialog)
function tools(box, shown, actions, bulk) {
  const search = control("input", { type: "search", value: view.q, placeholder: "Search members" },
    "Search members");
  search.addEventListener("input", () => { view.q = search.value; view.page = 0; render(); $(box.id).querySelector("input[type=search]").focus(); });
  const sort = control("select", {}, "Sort by");
  for (const [v, t] of [["name", "Name"], ["spend", "Spend, highest first"], ["tier", "Tier"]]) {
    sort.append(new Option(`Sort: ${t}`, v, false, view.sort === v));
  }
  sort.addEventListener("change", () => { view.sort = sort.value; view.page = 0; render(); });
  const from = shown.all.length ? view.page * PAGE + 1 : 0;
  const to = Math.min((view.page + 1) * PAGE, shown.all.length);
  const where = control("span", { textContent: `${from}–${to} of ${shown.all.length}` });
  const prev = control("button", { type: "button", textContent: "Previous", disabled: view.page === 0 });
  const next = control("button", { type: "button", textContent: "Next", disabled: view.page >= shown.pages - 1 });
  prev.addEventListener("click", () => { view.page -= 1; render(); });
  next.addEventListener("click", () => { view.page += 1; render(); });
  const all = control("input", { type: "checkbox" }, "Select all on this page");
  all.checked = shown.page.length > 0 && shown.page.every((m) => view.selected.has(m.member_id));
  all.addEventListener("change", () => {
    for (const m of shown.page) { if (all.checked) view.selected.add(m.member_id); else view.selected.delete(m.member_id); }
    render();
  });
  const allLabel = control("label", { textContent: " all on this page" });
  allLabel.prepend(all);
  const row1 = control("div", { className: "row" });
  row1.append(search, sort, prev, where, next);
  const row2 = control("div", { className: "row" });
  row2.append(allLabel, control("span", { textContent: `${view.selected.size} selected` }));
  for (const [label, call] of bulk ? actions : []) {
    const b = control("button", { type: "button", textContent: label, disabled: !view.selected.size || !canChange() });
    b.addEventListener("click", () => {
      const ids = [...view.selected];
      if (call === null) {
        openLimitDialog(`Limit for ${ids.length} selected`, null, async (amount) => {
          for (const id of ids) await api("PUT", `/admin/v1/orgs/${org()}/extra-usage/members/${id}`, { monthly_limit: amount });
          view.selected.clear();
        });
      } else {
        act(async () => { for (const id of ids) await call(id); view.selected.clear(); },
          `${label.replace(" for selected", "")}d for ${ids.length} member${ids.length === 1 ? "" : "s"}.`);
      }
    });
    row2.append(b);
  }
  box.replaceChildren(row1, row2);
}

function render() {
  const s = state.settings;
  const team = s.plan === "team";
  $("who").textContent = `${state.me.org_name} (${s.plan}) · signed in as ${state.me.member_id ?? "operator"}, ${state.me.role.replace("_", " ")}`;
  $("eu-state").textContent = s.enabled ? "Extra usage is on." : "Extra usage is off.";
  $("eu-enable").hidden = s.enabled;
  $("eu-disable").hidden = !s.enabled;
  $("limit-value").textContent = money(s.monthly_limit);
  $("read-only").hidden = canChange();
  fillMonths();
  renderDaily();
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
    const rows = $("team-member-rows");
    rows.replaceChildren();
    const shown = visibleMembers();
    tools($("team-tools"), shown, [
      ["Enable for selected", (id) => api("PUT", `/admin/v1/orgs/${org()}/extra-usage/members/${id}`, { enabled: true })],
      ["Disable for selected", (id) => api("PUT", `/admin/v1/orgs/${org()}/extra-usage/members/${id}`, { enabled: false })],
    ], s.member_scope === "selected");
    for (const m of shown.page) {
      const r = rows.insertRow();
      cell(r, null, "Select").append(selectBox(m));
      cell(r, m.member_id, "Member"); cell(r, tierName(m.tier), "Tier");
      cell(r, null, "This month").append(spendAgainst(m.extra_usage, m.binding, m.tier));
      cell(r, null, "Seat allowance").append(windowBars(m.windows));
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = s.member_scope === "all" || m.extra_usage_enabled;
      box.disabled = s.member_scope === "all" || !canChange();
      box.setAttribute("aria-label", `Extra usage for ${m.member_id}`);
      box.addEventListener("change", () => act(() => api("PUT",
        `/admin/v1/orgs/${org()}/extra-usage/members/${m.member_id}`, { enabled: box.checked })));
      cell(r, null, "Enabled").append(box);
    }
  } else {
    const tiers = $("tier-rows");
    tiers.replaceChildren();
    for (const [tier, limit] of Object.entries(s.tier_limits)) {
      const name = tier.charAt(0).toUpperCase() + tier.slice(1);
      const r = tiers.insertRow();
      cell(r, name, "Seat tier"); cell(r, money(limit), "Monthly limit per member");
      r.insertCell().append(pencil(`Edit ${name} limit`, `${name} seat limit`, limit,
        (amount) => api("PUT", `/admin/v1/orgs/${org()}/extra-usage/tiers/${tier}`, { monthly_limit: amount })));
    }
    const users = $("user-rows");
    users.replaceChildren();
    const shown = visibleMembers();
    tools($("user-tools"), shown, [["Set a limit for selected…", null]], true);
    for (const m of shown.page) {
      const r = users.insertRow();
      cell(r, null, "Select").append(selectBox(m));
      cell(r, m.member_id, "Member"); cell(r, tierName(m.tier), "Tier");
      cell(r, null, "This month").append(spendAgainst(m.extra_usage, m.binding, m.tier));
      cell(r, null, "Seat allowance").append(windowBars(m.windows));
      cell(r, m.monthly_limit === "0.00" ? "Off" : money(m.monthly_limit), "Own limit");
      r.insertCell().append(pencil(`Edit limit for ${m.member_id}`, `Limit for ${m.member_id}`,
        m.monthly_limit, (amount) => api("PUT",
          `/admin/v1/orgs/${org()}/extra-usage/members/${m.member_id}`, { monthly_limit: amount })));
    }
    renderRequests();
  }
  // an admin sees everything and changes nothing; finding, statements and the chart stay open
  for (const el of document.querySelectorAll("#app input, #app select, #app button")) {
    if (!canChange() && !el.closest(".members-tools, #statements, #daily")) el.disabled = true;
  }
}

// -- extra usage requests (Enterprise): approve with an amount, or dismiss; decided ones stay --
const day = (iso) => (iso ? iso.slice(0, 10) : "");

function approveControls(req, li) {
  const amount = document.createElement("input");
  amount.inputMode = "decimal";
  amount.value = req.amount ?? "";
  amount.placeholder = "50.00";
  amount.setAttribute("aria-label", `Amount to grant ${req.member_id} (USD)`);
  const why = document.createElement("p");
  why.className = "error";
  why.setAttribute("role", "alert");
  const approve = async (extra) => {
    why.textContent = "";
    const body = { ...extra };
    if (amount.value.trim()) body.amount = amount.value.trim();
    try {
      await api("POST", `/admin/v1/orgs/${org()}/extra-usage/requests/${req.id}/approve`, body);
      notice(`Approved: ${req.member_id} may spend ${usd(body.amount ?? req.amount)} more this month.`);
      await load();
    } catch (err) {
      // the API names its flag; the page offers it as a button instead
      why.textContent = plainWords(err).replace(/: approve with .*$/, ".")
        .replace(/^./, (c) => c.toUpperCase());
      // another limit would still stop the member: offer to raise it with the approval
      for (const [flag, label] of [["raise_tier_limit", "Raise the tier limit too and approve"],
        ["raise_org_limit", "Raise the organization's limit too and approve"]]) {
        if (err.status === 409 && err.message.includes(flag)) {
          const b = document.createElement("button");
          b.type = "button";
          b.textContent = label;
          b.addEventListener("click", () => approve({ ...extra, [flag]: true }));
          why.append(" ", b);
        }
      }
    }
  };
  const ok = document.createElement("button");
  ok.type = "button";
  ok.textContent = "Approve";
  ok.setAttribute("aria-label", `Approve the request of ${req.member_id}`);
  ok.addEventListener("click", () => approve({}));
  const no = document.createElement("button");
  no.type = "button";
  no.textContent = "Dismiss";
  no.setAttribute("aria-label", `Dismiss the request of ${req.member_id}`);
  no.addEventListener("click", () => act(() => api("POST",
    `/admin/v1/orgs/${org()}/extra-usage/requests/${req.id}/dismiss`), "Request dismissed."));
  for (const el of [amount, ok, no]) el.disabled = !canChange();
  const row = document.createElement("div");
  row.className = "row";
  row.append(amount, ok, no);
  li.append(row, why);
}

function renderRequests() {
  const list = $("request-list");
  list.replaceChildren();
  const pending = state.requests.filter((r) => r.state === "pending");
  $("no-requests").hidden = pending.length > 0;
  for (const req of pending) {
    const li = document.createElement("li");
    const text = document.createElement("p");
    text.textContent = `${req.member_id} asks for ${req.amount ? usd(req.amount) : "more (no amount named)"}`
      + `${req.message ? ` — “${req.message}”` : ""} · ${day(req.created_at)}`;
    li.append(text);
    approveControls(req, li);
    list.append(li);
  }
  const decided = $("decided-list");
  decided.replaceChildren();
  const done = state.requests.filter((r) => r.state !== "pending").reverse();
  $("decided").hidden = done.length === 0;
  for (const req of done) {
    const li = document.createElement("li");
    const what = req.state === "approved"
      ? `approved ${req.granted ? usd(req.granted) : ""}`.trim() : "dismissed";
    const after = [req.new_limit && `own limit now ${usd(req.new_limit)}`,
      req.new_tier_limit && `tier limit now ${usd(req.new_tier_limit)}`,
      req.new_org_limit && `organization limit now ${usd(req.new_org_limit)}`].filter(Boolean);
    li.textContent = `${req.member_id} asked for ${req.amount ? usd(req.amount) : "more"} on `
      + `${day(req.created_at)}: ${what} by ${(req.decided_by ?? "?").replace(/^member:/, "")} on ${day(req.decided_at)}`
      + (after.length ? ` (${after.join(", ")})` : "");
    decided.append(li);
  }
}

// the audit log as the API words it: when, who, what changed ("monthly limit $100.00 → Unlimited")
function renderAudit() {
  const list = $("audit-list");
  list.replaceChildren();
  for (const e of state.audit.slice(0, 50)) {
    const li = document.createElement("li");
    const when = new Date(e.at * 1000).toISOString().slice(0, 16).replace("T", " ");
    const who = e.actor.replace(/^member:/, "");
    li.textContent = `${when} UTC · ${who} · ${e.summary || e.action.replaceAll("_", " ").replace(".", ": ")}`;
    list.append(li);
  }
}

// purchases and confirmed reloads, from the audit log: when, how much, who, balance after
function renderCredits() {
  const list = $("credit-history");
  list.replaceChildren();
  const pending = state.settings.auto_reload?.pending_reload_id;
  $("no-credits").hidden = state.credits.length > 0 || Boolean(pending);
  if (pending) {
    list.append(Object.assign(document.createElement("li"), {
      textContent: `Auto-reload of ${usd(state.settings.auto_reload.amount ?? "0")} requested · pending the payment provider's confirmation`,
    }));
  }
  for (const e of state.credits) {
    const before = nanoOf(e.before?.balance ?? "0");
    const after = nanoOf(e.after?.balance ?? "0");
    const li = document.createElement("li");
    const when = new Date(e.at * 1000).toISOString().slice(0, 16).replace("T", " ");
    const kind = e.action === "credit.purchase" ? "Purchase" : "Auto-reload";
    li.textContent = `${when} UTC · ${kind} of ${usd(nanoUsd(after - before))}`
      + ` · completed · balance after ${usd(nanoUsd(after))}`;
    list.append(li);
  }
}

async function load() {
  state.me = await api("GET", "/admin/v1/me");
  if (!state.me.org_id) throw new ApiError(400, "The operator token has no organization: sign in with an owner's admin token.");
  if (!["primary_owner", "owner", "admin"].includes(state.me.role)) {
    throw new ApiError(403, `your role (${state.me.role}) cannot view usage settings; ask an owner of ${state.me.org_name}`);
  }
  const [settings, usage] = await Promise.all([
    api("GET", `/admin/v1/orgs/${org()}/extra-usage`),
    api("GET", `/admin/v1/orgs/${org()}/usage`)]);
  state.settings = settings;
  state.usage = usage;
  state.requests = settings.plan === "enterprise"
    ? (await api("GET", `/admin/v1/orgs/${org()}/extra-usage/requests`)).requests : [];
  state.audit = (await api("GET", `/admin/v1/orgs/${org()}/audit?limit=1000`)).entries;
  try {
    state.daily = await api("GET", `/admin/v1/orgs/${org()}/usage/daily`);
    state.dailyError = "";
  } catch (err) {
    state.daily = null;
    state.dailyError = plainWords(err);  // the ledger database may be down: the rest works
  }
  state.credits = settings.plan === "team"
    ? state.audit.filter((e) => e.action === "credit.purchase" || e.action === "credit.reload_confirm") : [];
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

// -- controls -------------------------------------------------------------------------------
$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN, $("token").value.trim());
  $("token").value = "";
  showError(null);
  start();
});
$("sign-out").addEventListener("click", () => { sessionStorage.removeItem(TOKEN); location.reload(); });
$("eu-disable").addEventListener("click", () => act(() => api("PATCH",
  `/admin/v1/orgs/${org()}/extra-usage`, { enabled: false }), "Extra usage is off."));

// -- Enable, step by step, as the help-center article walks an owner through it: Team asks
// for the first credit purchase (confirmed), then offers auto-reload, a monthly limit and
// who may use it; Enterprise asks for the organization's and the seat tiers' limits
const CENTS = /^\d+(\.\d{1,2})?$/;
const flow = { steps: [], at: 0, bought: false, buyKey: null, confirming: false };
function showStep() {
  const step = flow.steps[flow.at];
  for (const el of document.querySelectorAll("#enable-dialog [data-step]")) el.hidden = el.dataset.step !== step;
  $("enable-step").textContent = `Step ${flow.at + 1} of ${flow.steps.length}`;
  $("enable-error").textContent = "";
  const last = flow.at === flow.steps.length - 1;
  $("enable-next").textContent = step === "buy" && flow.confirming && !flow.bought ? "Confirm purchase"
    : last ? "Turn on extra usage" : "Continue";
}
$("eu-enable").addEventListener("click", () => {
  const team = state.settings.plan === "team";
  Object.assign(flow, { steps: team ? ["buy", "reload", "limit", "who"] : ["limits"], at: 0,
    bought: false, buyKey: crypto.randomUUID(), confirming: false });
  $("enable-buy-confirm").hidden = true;
  $("enable-buy-amount").disabled = false;
  const tiers = $("enable-tiers");
  tiers.replaceChildren();
  for (const [tier, current] of Object.entries(state.settings.tier_limits ?? {})) {
    const id = `enable-tier-${tier}`;
    const label = control("label", { htmlFor: id, textContent: `${tierName(tier)} seat tier, per member (USD)` });
    const input = control("input", { id, inputMode: "decimal", placeholder: "Unlimited", value: current ?? "" });
    input.dataset.tier = tier;
    tiers.append(label, input);
  }
  showStep();
  $("enable-dialog").showModal();
});
$("enable-cancel").addEventListener("click", () => $("enable-dialog").close());
const cents = (id, label, empty) => {
  const v = $(id).value.trim();
  if (v === "" && empty) return null;
  if (!CENTS.test(v)) throw new ApiError(400, `${label}: enter dollars and cents, such as 100.00.`);
  return v;
};
$("enable-next").addEventListener("click", async () => {
  const step = flow.steps[flow.at];
  const base = `/admin/v1/orgs/${org()}/extra-usage`;
  try {
    if (step === "buy" && !flow.bought) {
      const amount = cents("enable-buy-amount", "Credit to buy", false);
      if (!flow.confirming) {
        flow.confirming = true;
        $("enable-buy-confirm").textContent = `Buy ${usd(amount)} of prepaid credit for ${state.me.org_name}? It is charged to the organization's payment method now.`;
        $("enable-buy-confirm").hidden = false;
        showStep();
        return;
      }
      const paid = await api("POST", `${base}/purchases`, { amount, idempotency_key: flow.buyKey, buy_ahead: true });
      flow.bought = true;
      $("enable-buy-confirm").textContent = `Payment accepted: ${usd(paid.amount)} added, balance ${usd(paid.balance)}.`;
      $("enable-buy-amount").disabled = true;
      showStep();  // the provider's answer stays in view until the owner goes on
      return;
    } else if (step === "reload" && $("enable-reload-on").checked) {
      await api("PATCH", base, { auto_reload: { enabled: true,
        threshold: cents("enable-reload-threshold", "Reload when balance reaches", false),
        amount: cents("enable-reload-amount", "Reload amount", false) } });
    } else if (step === "limit") {
      await api("PATCH", base, { monthly_limit: cents("enable-limit", "Monthly organization limit", true) });
    } else if (step === "who") {
      await api("PATCH", base, { member_scope: $("enable-scope").value, enabled: true });
    } else if (step === "limits") {
      const org_limit = cents("enable-org-limit", "Organization", true);
      for (const input of $("enable-tiers").querySelectorAll("input")) {
        const v = cents(input.id, `${tierName(input.dataset.tier)} seat tier`, true);
        await api("PUT", `${base}/tiers/${input.dataset.tier}`, { monthly_limit: v });
      }
      await api("PATCH", base, { monthly_limit: org_limit, enabled: true });
    }
    if (flow.at === flow.steps.length - 1) {
      $("enable-dialog").close();
      await load();
      notice("Extra usage is on.");
      return;
    }
    flow.at += 1;
    showStep();
  } catch (err) {
    $("enable-error").textContent = plainWords(err);
  }
});
$("adjust-limit").addEventListener("click", () => openLimitDialog("Adjust limit",
  state.settings.monthly_limit, (amount) => api("PATCH", `/admin/v1/orgs/${org()}/extra-usage`,
    { monthly_limit: amount })));
// a purchase: confirmed first (amount, who pays), one idempotency key per confirmed purchase
let pendingPurchase = null;
$("buy-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const amount = $("buy-amount").value.trim();
  if (!/^\d+(\.\d{1,2})?$/.test(amount)) {
    fieldError($("buy-form"), "Amount: enter dollars and cents, such as 100.00.");
    return;
  }
  fieldError(null);
  const ahead = !state.settings.enabled;  // credit bought while it is off waits: said first
  pendingPurchase = { amount, idempotency_key: crypto.randomUUID(), ...(ahead ? { buy_ahead: true } : {}) };
  $("buy-confirm-text").textContent = (ahead
    ? `Extra usage is off: this credit is not used until you turn it on. Buy ${usd(amount)} ahead anyway for ${state.me.org_name}? `
    : `Buy ${usd(amount)} of prepaid credit for ${state.me.org_name}? `)
    + "It is charged to the organization's payment method now.";
  $("buy-confirm").hidden = false;
  $("buy-confirm-yes").focus();
});
$("buy-confirm-yes").addEventListener("click", () => {
  const p = pendingPurchase;
  $("buy-confirm").hidden = true;
  if (!p) return;
  pendingPurchase = null;
  act(() => api("POST", `/admin/v1/orgs/${org()}/extra-usage/purchases`, p),
    `Bought ${usd(p.amount)} of credit.`, $("buy-form"));
  $("buy-amount").value = "";
});
$("buy-confirm-no").addEventListener("click", () => {
  pendingPurchase = null;
  $("buy-confirm").hidden = true;
});
$("reload-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const auto_reload = { enabled: $("reload-enabled").checked };
  if ($("reload-threshold").value.trim()) auto_reload.threshold = $("reload-threshold").value.trim();
  if ($("reload-amount").value.trim()) auto_reload.amount = $("reload-amount").value.trim();
  act(() => api("PATCH", `/admin/v1/orgs/${org()}/extra-usage`, { auto_reload }), "Auto-reload saved.",
    $("reload-form"));
});
$("member-scope").addEventListener("change", (ev) => act(() => api("PATCH",
  `/admin/v1/orgs/${org()}/extra-usage`, { member_scope: ev.target.value })));
$("member-consent").addEventListener("change", (ev) => act(() => api("PATCH",
  `/admin/v1/orgs/${org()}/extra-usage`, { member_consent: ev.target.value }),
  ev.target.value === "required" ? "Members now continue only once they accept extra usage."
    : "Members now continue on extra usage automatically."));
$("requests-enabled").addEventListener("change", (ev) => act(() => api("PATCH",
  `/admin/v1/orgs/${org()}/extra-usage`, { requests_enabled: ev.target.checked }),
  ev.target.checked ? "Members may ask for more." : "Members can no longer ask for more."));

// -- statements: this month (open) and the months before (closed, frozen) -----------------
function months() {
  const out = [];
  const d = new Date();
  for (let i = 0; i < 12; i += 1) {
    const m = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() - i, 1));
    out.push(`${m.getUTCFullYear()}-${String(m.getUTCMonth() + 1).padStart(2, "0")}`);
  }
  return out;
}
function fillMonths() {
  const sel = $("statement-period");
  if (sel.options.length) return;
  for (const m of months()) sel.append(new Option(m, m));
}
function statementPath() { return `/admin/v1/orgs/${org()}/statements/${$("statement-period").value}`; }

$("statement-view").addEventListener("click", async () => {
  const box = $("statement");
  box.replaceChildren();
  try {
    const doc = await api("GET", statementPath());
    const t = doc.totals;
    const head = document.createElement("p");
    head.textContent = `${doc.period} (${doc.status}): ${t.requests} requests · included usage `
      + `${usd(t.included_usage)} · extra usage ${usd(t.extra_usage)}`
      + (t.estimated !== "0.00" ? ` (of which estimated ${usd(t.estimated)})` : "")
      + (doc.invoice ? ` · amount due ${usd(doc.invoice.amount_due)}` : "")
      + (doc.closing_balance ? ` · balance ${usd(doc.opening_balance)} → ${usd(doc.closing_balance)}` : "");
    box.append(head);
    const table = document.createElement("table");
    const hr = table.createTHead().insertRow();
    for (const h of ["Member", "Model", "Mode", "Requests", "Cost"]) {
      const th = document.createElement("th"); th.scope = "col"; th.textContent = h; hr.append(th);
    }
    const body = table.createTBody();
    for (const l of doc.lines) {
      const r = body.insertRow();
      cell(r, l.member_id, "Member"); cell(r, l.model, "Model");
      cell(r, l.mode === "extra_usage" ? "extra usage" : "included", "Mode");
      cell(r, String(l.requests), "Requests"); cell(r, usd(l.cost), "Cost");
    }
    if (!doc.lines.length) box.append(Object.assign(document.createElement("p"), { textContent: "No usage this month." }));
    else box.append(table);
  } catch (err) {
    box.append(Object.assign(document.createElement("p"), { className: "error", textContent: plainWords(err) }));
  }
});
$("statement-csv").addEventListener("click", async () => {
  // the token goes in a header, never a URL: fetched, then saved from memory
  try {
    const resp = await fetch(`${statementPath()}.csv`, { headers: { authorization: `Bearer ${sessionStorage.getItem(TOKEN)}` } });
    if (!resp.ok) throw new ApiError(resp.status, (await resp.json().catch(() => ({})))?.error?.message || resp.statusText);
    const url = URL.createObjectURL(await resp.blob());
    const a = Object.assign(document.createElement("a"), { href: url, download: `statement-${org()}-${$("statement-period").value}.csv` });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) { showError(err); }
});

// live: the figures refresh every 30 s and when the tab comes back into focus — not while
// the owner is typing, confirming or in the limit dialog (a refresh would redraw the controls)
async function refresh() {
  if (!state.me || $("app").hidden || $("limit-dialog").open || $("enable-dialog").open
    || !$("buy-confirm").hidden) return;
  const el = document.activeElement;
  if (el && el.closest("#app") && ["INPUT", "SELECT"].includes(el.tagName)) return;
  try { await load(); } catch (err) { showError(err); }
}
setInterval(refresh, 30000);
window.addEventListener("focus", refresh);

start();
