// Extra usage requests (Enterprise): approve with an amount, or dismiss; decided ones stay
// listed with what was granted, by whom and when.
import vocabulary from "/admin/vocabulary.js";
import { api, orgPath } from "./api.js";
import { day, usd } from "./format.js";
import { page, state } from "./state.js";
import { $, act, canChange, notice, plainWords } from "./ui.js";

const { RequestState } = vocabulary;

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
      await api("POST", orgPath("extra-usage", "requests", req.id, "approve"), body);
      notice(`Approved: ${req.member_id} may spend ${usd(body.amount ?? req.amount)} more this month.`);
      await page.load();
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
    orgPath("extra-usage", "requests", req.id, "dismiss")), "Request dismissed."));
  for (const el of [amount, ok, no]) el.disabled = !canChange();
  const row = document.createElement("div");
  row.className = "row";
  row.append(amount, ok, no);
  li.append(row, why);
}

export function renderRequests() {
  const list = $("request-list");
  list.replaceChildren();
  const pending = state.requests.filter((r) => r.state === RequestState.PENDING);
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
  const done = state.requests.filter((r) => r.state !== RequestState.PENDING).reverse();
  $("decided").hidden = done.length === 0;
  for (const req of done) {
    const li = document.createElement("li");
    const what = req.state === RequestState.APPROVED
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
