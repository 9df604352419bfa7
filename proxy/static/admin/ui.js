// What every panel shares: errors in an owner's words, the banners, a change with its error
// next to its form, table cells and small controls.
import { $, banners } from "../common.js";
import vocabulary from "/admin/vocabulary.js";
import { tierName } from "./format.js";
import { page, state } from "./state.js";

// the API's field names, in the page's words
const FIELDS = {
  "auto_reload.threshold": "Reload when balance reaches",
  "auto_reload.amount": "Reload amount",
  "auto_reload": "Auto-reload",
  amount: "Amount",
  monthly_limit: "Monthly limit",
};
export function inPlainWords(message) {
  const m = /^([\w.]+): (.*)$/.exec(message);
  if (!m || !FIELDS[m[1]]) return message;
  return `${FIELDS[m[1]]}: ${m[2].replace(/\bauto_reload\.amount\b/g, "a reload amount")}`;
}

export function plainWords(err) {
  if (err.status === 401) return "Your admin token was not accepted. Sign in again with a valid token.";
  if (err.status === 403) return `You don't have permission to do that: ${err.message}`;
  if (err.status === 404) return `Not found: ${err.message}`;
  if (err.status === 503 && /ledger|database|PostgreSQL/i.test(err.message)) {
    return "Statements come from the ledger database, which cannot be reached right now. Try again in a moment.";
  }
  if (err.status >= 500) return `The service could not complete this right now (${err.message}). Try again in a moment.`;
  return inPlainWords(err.message);
}

export const { showError, notice } = banners(plainWords);

// what limits a spend now (the usage API's "binding"), in an owner's words (the vocabulary's)
export function ruleWords(rule, tier) {
  const said = vocabulary.REASON_WORDS[rule]?.owner;
  return said === undefined ? rule : said.replace("{tier}", tierName(tier ?? ""));
}

export const canChange = () => vocabulary.Role.MAY_CHANGE.includes(state.me.role);

export function fieldError(where, text) {
  for (const el of document.querySelectorAll(".field-error")) el.remove();
  if (!where) return;
  const p = document.createElement("p");
  p.className = "error field-error";
  p.setAttribute("role", "alert");
  p.textContent = inPlainWords(text);
  where.after(p);
}

// a change: its error shown next to its form (``where``: an element after which it goes), or
// in the banner; a failed change puts every control back as the stored state has it
export async function act(fn, done, where) {
  showError(null);
  fieldError(null);
  try {
    await fn();
    await page.load();  // the figures first, then the notice: nothing redraws after it
    if (done) notice(done);
  } catch (err) {
    if (where) { notice(""); fieldError(where, plainWords(err)); } else showError(err);
    if (state.settings) page.render();  // a ticked box or a changed select goes back
  }
}

// a cell, labelled with its column for the phone layout (the table's rows become cards)
export function cell(row, text, label) {
  const td = row.insertCell();
  if (text !== undefined && text !== null) td.textContent = text;
  if (label) td.dataset.label = label;
  return td;
}

export function control(tag, props, label) {
  const el = Object.assign(document.createElement(tag), props);
  if (label) el.setAttribute("aria-label", label);
  return el;
}

export { $ };
