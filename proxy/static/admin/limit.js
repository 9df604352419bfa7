// The limit dialog: one for the org, the seat tiers and the members ("Set limit" / "Set to
// unlimited"), and the pencil that opens it.
import { $, canChange, notice, plainWords } from "./ui.js";
import { page, state } from "./state.js";

export function openLimitDialog(title, current, apply) {
  $("limit-dialog-title").textContent = title;
  $("limit-amount").value = current ?? "";
  $("limit-error").textContent = "";
  state.onLimit = apply;
  $("limit-dialog").showModal();
  $("limit-amount").focus();
}

export function pencil(label, title, current, apply) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = "✎";
  b.setAttribute("aria-label", label);
  b.disabled = !canChange();
  b.addEventListener("click", () => openLimitDialog(title, current, apply));
  return b;
}

export function init() {
  $("limit-form").addEventListener("submit", async (ev) => {
    const choice = ev.submitter?.value;
    if (choice === "cancel") return;
    ev.preventDefault();
    const amount = choice === "unlimited" ? null : $("limit-amount").value.trim();
    if (amount === "") { $("limit-error").textContent = "Enter an amount in USD, such as 500.00."; return; }
    try {
      await state.onLimit(amount);
      $("limit-dialog").close();
      notice(amount === null ? "Limit set to unlimited." : `Limit set to $${amount}.`);
      await page.load();
    } catch (err) {
      $("limit-error").textContent = plainWords(err);
    }
  });
}
