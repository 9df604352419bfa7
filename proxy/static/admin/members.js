// The members panels: what binds each member's spend, their seat windows, and, for many
// members, search, sort, pages of 50 and changes to a selection at once. Team: who may use
// extra usage; Enterprise: the seat-tier limits and each member's own limit.
import vocabulary from "/admin/vocabulary.js";
import { api, orgPath } from "./api.js";
import { at, money, tierName, usd } from "./format.js";
import { openLimitDialog, pencil } from "./limit.js";
import { page, state } from "./state.js";
import { $, act, canChange, cell, control, ruleWords } from "./ui.js";

const { Claim, Reason, Scope } = vocabulary;
const PAGE = 50;
const isOff = (rule) => rule === Reason.ORG_OFF || rule === Reason.MEMBER_OFF;

// "$201.60 of $200.00 · Premium tier limit · Reached", with a bar of spend against the limit
export function spendAgainst(spent, binding, tier) {
  const box = document.createElement("div");
  box.className = "spend";
  if (!binding) { box.textContent = usd(spent); return box; }
  const off = isOff(binding.rule);
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

// a member's seat windows: used against the allowance, and when each resets
function windowBars(w) {
  const box = document.createElement("div");
  box.className = "windows";
  if (!w) return box;
  for (const [key, label] of [[Claim.FIVE_HOUR, "5-hour"], [Claim.SEVEN_DAY, "7-day"]]) {
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

function visibleMembers() {
  const view = state.view;
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
  const selected = state.view.selected;
  const box = document.createElement("input");
  box.type = "checkbox";
  box.checked = selected.has(m.member_id);
  box.setAttribute("aria-label", `Select ${m.member_id}`);
  box.addEventListener("change", () => {
    if (box.checked) selected.add(m.member_id); else selected.delete(m.member_id);
    page.render();
  });
  return box;
}

const memberSetting = (id, body) => api("PUT", orgPath("extra-usage", "members", id), body);

// the toolbar above a members table: search, sort, pages, select all, the bulk actions
// (``actions``: [label, (member id) => a call] — or null for the limit dialog)
function tools(box, shown, actions, bulk) {
  const view = state.view;
  const search = control("input", { type: "search", value: view.q, placeholder: "Search members" },
    "Search members");
  search.addEventListener("input", () => {
    view.q = search.value; view.page = 0; page.render();
    $(box.id).querySelector("input[type=search]").focus();
  });
  const sort = control("select", {}, "Sort by");
  for (const [v, t] of [["name", "Name"], ["spend", "Spend, highest first"], ["tier", "Tier"]]) {
    sort.append(new Option(`Sort: ${t}`, v, false, view.sort === v));
  }
  sort.addEventListener("change", () => { view.sort = sort.value; view.page = 0; page.render(); });
  const from = shown.all.length ? view.page * PAGE + 1 : 0;
  const to = Math.min((view.page + 1) * PAGE, shown.all.length);
  const where = control("span", { textContent: `${from}–${to} of ${shown.all.length}` });
  const prev = control("button", { type: "button", textContent: "Previous", disabled: view.page === 0 });
  const next = control("button", { type: "button", textContent: "Next", disabled: view.page >= shown.pages - 1 });
  prev.addEventListener("click", () => { view.page -= 1; page.render(); });
  next.addEventListener("click", () => { view.page += 1; page.render(); });
  const all = control("input", { type: "checkbox" }, "Select all on this page");
  all.checked = shown.page.length > 0 && shown.page.every((m) => view.selected.has(m.member_id));
  all.addEventListener("change", () => {
    for (const m of shown.page) { if (all.checked) view.selected.add(m.member_id); else view.selected.delete(m.member_id); }
    page.render();
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
          for (const id of ids) await memberSetting(id, { monthly_limit: amount });
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

// a member's row: select, name, tier, this month's spend, the seat windows
function memberRow(rows, m) {
  const r = rows.insertRow();
  cell(r, null, "Select").append(selectBox(m));
  cell(r, m.member_id, "Member"); cell(r, tierName(m.tier), "Tier");
  cell(r, null, "This month").append(spendAgainst(m.extra_usage, m.binding, m.tier));
  cell(r, null, "Seat allowance").append(windowBars(m.windows));
  return r;
}

// Team: members with extra usage (all, or the selected ones)
export function renderTeamMembers() {
  const scope = state.settings.member_scope;
  const rows = $("team-member-rows");
  rows.replaceChildren();
  const shown = visibleMembers();
  tools($("team-tools"), shown, [
    ["Enable for selected", (id) => memberSetting(id, { enabled: true })],
    ["Disable for selected", (id) => memberSetting(id, { enabled: false })],
  ], scope === Scope.SELECTED);
  for (const m of shown.page) {
    const r = memberRow(rows, m);
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = scope === Scope.ALL_MEMBERS || m.extra_usage_enabled;
    box.disabled = scope === Scope.ALL_MEMBERS || !canChange();
    box.setAttribute("aria-label", `Extra usage for ${m.member_id}`);
    box.addEventListener("change", () => act(() => memberSetting(m.member_id, { enabled: box.checked })));
    cell(r, null, "Enabled").append(box);
  }
}

// Enterprise: the seat-tier limits, and spend limits by user
export function renderLimits() {
  const tiers = $("tier-rows");
  tiers.replaceChildren();
  for (const [tier, limit] of Object.entries(state.settings.tier_limits)) {
    const name = tierName(tier);
    const r = tiers.insertRow();
    cell(r, name, "Seat tier"); cell(r, money(limit), "Monthly limit per member");
    r.insertCell().append(pencil(`Edit ${name} limit`, `${name} seat limit`, limit,
      (amount) => api("PUT", orgPath("extra-usage", "tiers", tier), { monthly_limit: amount })));
  }
  const users = $("user-rows");
  users.replaceChildren();
  const shown = visibleMembers();
  tools($("user-tools"), shown, [["Set a limit for selected…", null]], true);
  for (const m of shown.page) {
    const r = memberRow(users, m);
    cell(r, m.monthly_limit === "0.00" ? "Off" : money(m.monthly_limit), "Own limit");
    r.insertCell().append(pencil(`Edit limit for ${m.member_id}`, `Limit for ${m.member_id}`,
      m.monthly_limit, (amount) => memberSetting(m.member_id, { monthly_limit: amount })));
  }
}
