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

// purchases and confirmed reloads, from the audit log: when, how much, who, balance after
export function renderCredits() {
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
    const kind = e.action === "credit.purchase" ? "Purchase" : "Auto-reload";
    li.textContent = `${stamp(e.at)} UTC · ${kind} of ${usd(nanoUsd(after - before))}`
      + ` · completed · balance after ${usd(nanoUsd(after))}`;
    list.append(li);
  }
}
