// "Your usage": a member's own windows and extra usage. Plain ES module, no build step. The
// proxy key the member pasted is kept in sessionStorage (this tab only), never in a URL.
import { $, ApiError, apiClient, banners } from "./common.js";
import vocabulary from "/admin/vocabulary.js";

const KEY = "eup-proxy-key";

function plainWords(err) {
  if (err.status === 401) return "This key was not accepted: it may be mistyped or revoked. Sign in again with your current key.";
  if (err.status === 403) return `This key may not do that: ${err.message}`;
  if (err.status >= 500) return "Your usage cannot be shown right now. Try again in a moment.";
  return err.message;
}

const api = apiClient(() => ({ "x-api-key": sessionStorage.getItem(KEY) }));
const { showError, notice } = banners(plainWords);

const money = (s) => "$" + Number(s).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const when = (iso) => new Date(iso).toLocaleString("en-GB", { timeZone: "UTC", dateStyle: "medium", timeStyle: "short" }) + " UTC";

function bar(id, fraction) {
  const el = $(id), pct = Math.round(Math.min(fraction, 1) * 100);
  el.querySelector("span").style.width = pct + "%";
  el.setAttribute("aria-valuenow", String(pct));
  el.classList.toggle("warn", fraction >= 0.75 && fraction < 1);
  el.classList.toggle("full", fraction >= 1);
}

// why extra usage is not available, in the member's words (the vocabulary's table)
const WHY = Object.fromEntries(
  Object.entries(vocabulary.REASON_WORDS).filter(([, w]) => w.member).map(([r, w]) => [r, w.member]));

function window_(prefix, w, label) {
  $(`${prefix}-text`).textContent = `${Math.round(w.utilization * 100)}% of ${money(w.allowance)}`;
  bar(`${prefix}-bar`, w.utilization);
  $(`${prefix}-reset`).textContent = (w.utilization >= 1 ? `${label} reached · resets ` : "Resets ") + when(w.resets_at);
}

async function load() {
  const doc = await api("GET", "/v1/usage/me");
  const eu = doc.extra_usage;
  $("who").textContent = `${doc.member_id} · ${doc.org_id} · ${doc.tier} seat`;
  window_("s", doc.windows.five_hour, "Session limit");
  window_("w", doc.windows.seven_day, "Weekly limit");
  let status = eu.available
    ? (doc.mode === vocabulary.Mode.EXTRA_USAGE ? "You are on extra usage, billed at API prices." : "Extra usage is available when you reach your seat limit.")
    : WHY[eu.disabled_reason] || "Extra usage is not available.";
  if (eu.balance !== undefined) status += ` Prepaid balance: ${money(eu.balance)}.`;
  $("eu-status").textContent = status;
  const b = eu.binding;
  $("spend-meter").hidden = !eu.org_enabled;
  if (b) {
    $("spend-name").textContent = `This month, against your ${b.name}`;
    $("spend-text").textContent = `${money(b.spent)} of ${money(b.limit)}`;
    bar("spend-bar", Number(b.limit) > 0 ? Number(b.spent) / Number(b.limit) : 1);
  } else {
    $("spend-name").textContent = "This month (no spend limit)";
    $("spend-text").textContent = money(eu.month_to_date_spend);
    bar("spend-bar", 0);
  }
  $("spend-reset").textContent = "Limits reset " + when(eu.resets_at);
  const needsConsent = eu.org_enabled && eu.consent === "required";
  $("consent").hidden = !needsConsent || eu.accepted;
  $("withdraw").hidden = !needsConsent || !eu.accepted;
  const askable = doc.plan === vocabulary.Plan.ENTERPRISE && eu.org_enabled;
  $("ask").hidden = !askable;
  if (askable) {
    const mine = await api("GET", "/v1/usage/me/extra-usage-requests");
    const last = mine.requests[0];
    $("ask-state").textContent = last
      ? `Your request of ${last.created_at.slice(0, 10)}${last.amount ? ` for ${money(last.amount)}` : ""} is ${last.state}.`
      : "";
  }
}

async function run(action, done) {
  showError(null); notice("");
  try { await action(); if (done) notice(done); await load(); } catch (err) { showError(err); }
}

function signedIn(yes) {
  $("signin").hidden = yes; $("app").hidden = !yes; $("sign-out").hidden = !yes;
}

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  run(async () => { await load(); signedIn(true); });
});
$("sign-out").addEventListener("click", () => { sessionStorage.removeItem(KEY); signedIn(false); notice(""); });
$("consent").addEventListener("click", () => run(() => api("POST", "/v1/usage/me/extra-usage", { accept: true }), "You accepted continuing on extra usage."));
$("withdraw").addEventListener("click", () => run(() => api("POST", "/v1/usage/me/extra-usage", { accept: false }), "You will not continue on extra usage."));
$("ask-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const amount = $("ask-amount").value.trim();
  if (amount && !/^\d+(\.\d{1,2})?$/.test(amount)) {
    showError(new ApiError(400, "Type an amount in dollars and cents, such as 25 or 25.50."));
    return;
  }
  run(() => api("POST", "/v1/usage/me/extra-usage-requests", amount ? { amount } : {}), "Your admins were asked for more.");
});

if (sessionStorage.getItem(KEY)) run(async () => { await load(); signedIn(true); });
