// Statements: this month (open) and the months before (closed, frozen), viewed or downloaded
// as CSV (the token goes in a header, never a URL: fetched, then saved from memory).
import { ApiError } from "../common.js";
import vocabulary from "/admin/vocabulary.js";
import { api, authorization, orgPath } from "./api.js";
import { usd } from "./format.js";
import { state } from "./state.js";
import { $, cell, plainWords, showError } from "./ui.js";

function months() {
  const out = [];
  const d = new Date();
  for (let i = 0; i < 12; i += 1) {
    const m = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() - i, 1));
    out.push(`${m.getUTCFullYear()}-${String(m.getUTCMonth() + 1).padStart(2, "0")}`);
  }
  return out;
}

export function fillMonths() {
  const sel = $("statement-period");
  if (sel.options.length) return;
  for (const m of months()) sel.append(new Option(m, m));
}

const period = () => $("statement-period").value;

async function view() {
  const box = $("statement");
  box.replaceChildren();
  try {
    const doc = await api("GET", orgPath("statements", period()));
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
      cell(r, l.mode === vocabulary.Mode.EXTRA_USAGE ? "extra usage" : "included", "Mode");
      cell(r, String(l.requests), "Requests"); cell(r, usd(l.cost), "Cost");
    }
    if (!doc.lines.length) box.append(Object.assign(document.createElement("p"), { textContent: "No usage this month." }));
    else box.append(table);
    if (doc.credits?.length) {  // Team: what was added to the balance in the month
      const list = document.createElement("ul");
      list.className = "statement-credits";
      for (const c of doc.credits) {
        list.append(Object.assign(document.createElement("li"), {
          textContent: `${c.at.slice(0, 16).replace("T", " ")} UTC · ${c.kind === "purchase" ? "Purchase" : "Auto-reload"} of ${usd(c.amount)}`,
        }));
      }
      box.append(Object.assign(document.createElement("h4"), { textContent: "Purchases and reloads" }), list);
    }
  } catch (err) {
    box.append(Object.assign(document.createElement("p"), { className: "error", textContent: plainWords(err) }));
  }
}

async function download() {
  try {
    const resp = await fetch(orgPath("statements", `${period()}.csv`), { headers: authorization() });
    if (!resp.ok) throw new ApiError(resp.status, (await resp.json().catch(() => ({})))?.error?.message || resp.statusText);
    const url = URL.createObjectURL(await resp.blob());
    const a = Object.assign(document.createElement("a"), { href: url, download: `statement-${state.me.org_id}-${period()}.csv` });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) { showError(err); }
}

export function init() {
  $("statement-view").addEventListener("click", view);
  $("statement-csv").addEventListener("click", download);
}
