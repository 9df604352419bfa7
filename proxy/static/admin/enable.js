// "Enable", step by step, as the help-center article walks an owner through it: Team asks for
// the first credit purchase (confirmed), then offers auto-reload, a monthly limit and who may
// use it; Enterprise asks for the organization's and the seat tiers' limits.
import { ApiError } from "../common.js";
import vocabulary from "/admin/vocabulary.js";
import { api, orgPath } from "./api.js";
import { tierName, usd } from "./format.js";
import { page, state } from "./state.js";
import { $, control, notice, plainWords } from "./ui.js";

const CENTS = /^\d+(\.\d{1,2})?$/;

function showStep() {
  const flow = state.flow;
  const step = flow.steps[flow.at];
  for (const el of document.querySelectorAll("#enable-dialog [data-step]")) el.hidden = el.dataset.step !== step;
  $("enable-step").textContent = `Step ${flow.at + 1} of ${flow.steps.length}`;
  $("enable-error").textContent = "";
  const last = flow.at === flow.steps.length - 1;
  $("enable-next").textContent = step === "buy" && flow.confirming && !flow.bought ? "Confirm purchase"
    : last ? "Turn on extra usage" : "Continue";
}

function open() {
  const team = state.settings.plan === vocabulary.Plan.TEAM;
  Object.assign(state.flow, { steps: team ? ["buy", "reload", "limit", "who"] : ["limits"], at: 0,
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
}

const cents = (id, label, empty) => {
  const v = $(id).value.trim();
  if (v === "" && empty) return null;
  if (!CENTS.test(v)) throw new ApiError(400, `${label}: enter dollars and cents, such as 100.00.`);
  return v;
};

// the purchase step: shown for confirmation first, then bought (its answer stays in view)
async function buy() {
  const flow = state.flow;
  const amount = cents("enable-buy-amount", "Credit to buy", false);
  if (!flow.confirming) {
    flow.confirming = true;
    $("enable-buy-confirm").textContent = `Buy ${usd(amount)} of prepaid credit for ${state.me.org_name}? It is charged to the organization's payment method now.`;
    $("enable-buy-confirm").hidden = false;
    return;
  }
  const paid = await api("POST", orgPath("extra-usage", "purchases"),
    { amount, idempotency_key: flow.buyKey, buy_ahead: true });
  flow.bought = true;
  $("enable-buy-confirm").textContent = `Payment accepted: ${usd(paid.amount)} added, balance ${usd(paid.balance)}.`;
  $("enable-buy-amount").disabled = true;
}

// one step's change; false: stay on this step
async function apply(step) {
  const settings = orgPath("extra-usage");
  if (step === "buy" && !state.flow.bought) {
    await buy();
    return false;
  } else if (step === "reload" && $("enable-reload-on").checked) {
    await api("PATCH", settings, { auto_reload: { enabled: true,
      threshold: cents("enable-reload-threshold", "Reload when balance reaches", false),
      amount: cents("enable-reload-amount", "Reload amount", false) } });
  } else if (step === "limit") {
    await api("PATCH", settings, { monthly_limit: cents("enable-limit", "Monthly organization limit", true) });
  } else if (step === "who") {
    await api("PATCH", settings, { member_scope: $("enable-scope").value, enabled: true });
  } else if (step === "limits") {
    const orgLimit = cents("enable-org-limit", "Organization", true);
    for (const input of $("enable-tiers").querySelectorAll("input")) {
      const v = cents(input.id, `${tierName(input.dataset.tier)} seat tier`, true);
      await api("PUT", orgPath("extra-usage", "tiers", input.dataset.tier), { monthly_limit: v });
    }
    await api("PATCH", settings, { monthly_limit: orgLimit, enabled: true });
  }
  return true;
}

async function next() {
  const flow = state.flow;
  try {
    if (!(await apply(flow.steps[flow.at]))) { showStep(); return; }
    if (flow.at === flow.steps.length - 1) {
      $("enable-dialog").close();
      await page.load();
      notice("Extra usage is on.");
      return;
    }
    flow.at += 1;
    showStep();
  } catch (err) {
    $("enable-error").textContent = plainWords(err);
  }
}

export function init() {
  $("eu-enable").addEventListener("click", open);
  $("enable-cancel").addEventListener("click", () => $("enable-dialog").close());
  $("enable-next").addEventListener("click", next);
}
