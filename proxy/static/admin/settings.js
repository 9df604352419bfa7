// The org's settings: turn extra usage off, member consent, requests on or off, who may use it
// (Team), the monthly limit, buying credit (confirmed first) and auto-reload (Team).
import vocabulary from "/admin/vocabulary.js";
import { api, orgPath } from "./api.js";
import { usd } from "./format.js";
import { openLimitDialog } from "./limit.js";
import { state } from "./state.js";
import { $, act, fieldError } from "./ui.js";

const patch = (body) => api("PATCH", orgPath("extra-usage"), body);

// a purchase: confirmed first (amount, who pays), one idempotency key per confirmed purchase
function confirmPurchase(ev) {
  ev.preventDefault();
  const amount = $("buy-amount").value.trim();
  if (!/^\d+(\.\d{1,2})?$/.test(amount)) {
    fieldError($("buy-form"), "Amount: enter dollars and cents, such as 100.00.");
    return;
  }
  fieldError(null);
  const ahead = !state.settings.enabled;  // credit bought while it is off waits: said first
  state.pendingPurchase = { amount, idempotency_key: crypto.randomUUID(), ...(ahead ? { buy_ahead: true } : {}) };
  $("buy-confirm-text").textContent = (ahead
    ? `Extra usage is off: this credit is not used until you turn it on. Buy ${usd(amount)} ahead anyway for ${state.me.org_name}? `
    : `Buy ${usd(amount)} of prepaid credit for ${state.me.org_name}? `)
    + "It is charged to the organization's payment method now.";
  $("buy-confirm").hidden = false;
  $("buy-confirm-yes").focus();
}

function buy() {
  const p = state.pendingPurchase;
  $("buy-confirm").hidden = true;
  if (!p) return;
  state.pendingPurchase = null;
  act(() => api("POST", orgPath("extra-usage", "purchases"), p),
    `Bought ${usd(p.amount)} of credit.`, $("buy-form"));
  $("buy-amount").value = "";
}

function saveReload(ev) {
  ev.preventDefault();
  const autoReload = { enabled: $("reload-enabled").checked };
  if ($("reload-threshold").value.trim()) autoReload.threshold = $("reload-threshold").value.trim();
  if ($("reload-amount").value.trim()) autoReload.amount = $("reload-amount").value.trim();
  act(() => patch({ auto_reload: autoReload }), "Auto-reload saved.", $("reload-form"));
}

export function init() {
  $("eu-disable").addEventListener("click", () => act(() => patch({ enabled: false }),
    "Extra usage is off."));
  $("adjust-limit").addEventListener("click", () => openLimitDialog("Adjust limit",
    state.settings.monthly_limit, (amount) => patch({ monthly_limit: amount })));
  $("buy-form").addEventListener("submit", confirmPurchase);
  $("buy-confirm-yes").addEventListener("click", buy);
  $("buy-confirm-no").addEventListener("click", () => {
    state.pendingPurchase = null;
    $("buy-confirm").hidden = true;
  });
  $("reload-form").addEventListener("submit", saveReload);
  $("member-scope").addEventListener("change", (ev) => act(() => patch({ member_scope: ev.target.value })));
  $("member-consent").addEventListener("change", (ev) => act(() => patch({ member_consent: ev.target.value }),
    ev.target.value === vocabulary.Consent.REQUIRED ? "Members now continue only once they accept extra usage."
      : "Members now continue on extra usage automatically."));
  $("requests-enabled").addEventListener("change", (ev) => act(() => patch({ requests_enabled: ev.target.checked }),
    ev.target.checked ? "Members may ask for more." : "Members can no longer ask for more."));
}
