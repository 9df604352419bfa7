// The audit log as the API words it, and Team's purchases and confirmed reloads.
import { nanoOf, nanoUsd, stamp, usd } from "./format.js";
import { state } from "./state.js";
import { $ } from "./ui.js";

// when, who, what changed ("monthly limit $100.00 → Unlimited")
export function renderAudit() {
  const list = $("audit-list");
  list.replaceChildren();
  for (const e of state.audit.slice(0, 50)) {
    const li = document.createElement("li");
    const who = e.actor.replace(/^member:/, "");
    li.textContent = `${stamp(e.at)} UTC · ${who} · ${e.summary || e.action.replaceAll("_", " ").replace(".", ": ")}`;
    list.append(li);
  }
}

// Team's purchases and confirmed reloads: all of them from the ledger (a page of its newest),
// with those the audit log shows that the ledger sink has not moved yet (the same time,
// amount and actor), newest first. Without the ledger (its database down, or none) the audit
// log's alone, and the page says so.
export function mergeCredits(ledger, audit) {
  const fromAudit = audit
    .filter((e) => e.action === "credit.purchase" || e.action === "credit.reload_confirm")
    .map((e) => {
      const after = nanoOf(e.after?.balance ?? "0");
      return {
        kind: e.action === "credit.purchase" ? "purchase" : "reload",
        at: e.at,
        amount: nanoUsd(after - nanoOf(e.before?.balance ?? "0")),
        by: e.actor,
        balanceAfter: nanoUsd(after),
      };
    });
  if (ledger === null) return fromAudit;
  const same = (a, b) => a.at === b.at && a.by === b.by && nanoOf(a.amount) === nanoOf(b.amount);
  const known = [...ledger];
  const unsunk = fromAudit.filter((a) => {
    const i = known.findIndex((l) => same(l, a));
    if (i < 0) return true;
    known[i] = { ...known[i], balanceAfter: a.balanceAfter };  // the audit knows the balance
    return false;
  });
  return [...unsunk, ...known].sort((a, b) => b.at - a.at);
}

export function renderCredits() {
  const list = $("credit-history");
  list.replaceChildren();
  const pending = state.settings.auto_reload?.pending_reload_id;
  $("no-credits").hidden = state.credits.length > 0 || Boolean(pending);
  $("credits-partial").hidden = !state.creditsPartial;
  if (pending) {
    list.append(Object.assign(document.createElement("li"), {
      textContent: `Auto-reload of ${usd(state.settings.auto_reload.amount ?? "0")} requested · pending the payment provider's confirmation`,
    }));
  }
  for (const c of state.credits) {
    const li = document.createElement("li");
    const kind = c.kind === "purchase" ? "Purchase" : "Auto-reload";
    li.textContent = `${stamp(c.at)} UTC · ${kind} of ${usd(nanoUsd(nanoOf(c.amount)))} · completed`
      + (c.balanceAfter ? ` · balance after ${usd(c.balanceAfter)}` : "")
      + (c.by ? ` · by ${c.by.replace(/^member:/, "")}` : "");
    list.append(li);
  }
}
