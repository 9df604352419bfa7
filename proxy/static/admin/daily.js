// This month's extra usage by day: plain SVG (a few dozen bars need no chart library and
// nothing to download at install time), each day's split by member or model beside it.
import { nanoOf, nanoUsd, usd } from "./format.js";
import { state } from "./state.js";
import { $, cell } from "./ui.js";

const NS = "http://www.w3.org/2000/svg";

export function renderDaily() {
  const chart = $("daily-chart");
  chart.replaceChildren();
  const days = state.daily?.days ?? [];
  if (state.dailyError) { chart.textContent = state.dailyError; return; }
  if (!days.length) { chart.textContent = "No extra usage this month yet."; }
  const now = new Date();
  const ndays = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 0)).getUTCDate();
  const byDay = Object.fromEntries(days.map((d) => [Number(d.day.slice(8, 10)), d]));
  const top = Math.max(...days.map((d) => Number(d.extra_usage)), 1e-9);
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${ndays * 10} 64`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `Extra usage by day this month: ${days.map((d) => `${d.day} ${usd(d.extra_usage)}`).join(", ") || "none"}`);
  svg.classList.add("daily");
  for (let i = 1; i <= ndays; i += 1) {
    const d = byDay[i];
    const h = d ? Math.max(1, (Number(d.extra_usage) / top) * 50) : 0;
    const rect = document.createElementNS(NS, "rect");
    rect.setAttribute("x", String((i - 1) * 10 + 1)); rect.setAttribute("width", "8");
    rect.setAttribute("y", String(52 - h)); rect.setAttribute("height", String(h));
    const title = document.createElementNS(NS, "title");
    title.textContent = d ? `${d.day}: ${usd(d.extra_usage)}` : `day ${i}: none`;
    rect.append(title);
    svg.append(rect);
  }
  // the baseline, a day label each week, and the tallest bar's amount
  const text = (x, y, t, anchor = "middle") => {
    const el = document.createElementNS(NS, "text");
    el.setAttribute("x", String(x)); el.setAttribute("y", String(y));
    el.setAttribute("text-anchor", anchor); el.textContent = t;
    svg.append(el);
  };
  const base = document.createElementNS(NS, "line");
  base.setAttribute("x1", "0"); base.setAttribute("x2", String(ndays * 10));
  base.setAttribute("y1", "52.5"); base.setAttribute("y2", "52.5");
  svg.append(base);
  for (const day of [1, 8, 15, 22, 29]) if (day <= ndays) text((day - 1) * 10 + 5, 62, String(day));
  const highest = days.reduce((a, d) => (nanoOf(d.extra_usage) > nanoOf(a.extra_usage) ? d : a), days[0]);
  if (highest) text(0, 7, `highest day ${usd(highest.extra_usage)}`, "start");
  chart.append(svg);
  const split = $("daily-split").value;
  $("daily-split-name").textContent = split === "by_member" ? "Member" : "Model";
  const totals = {};
  for (const d of days) for (const [k, v] of Object.entries(d[split])) totals[k] = (totals[k] ?? 0n) + nanoOf(v);
  const rows = $("daily-split-rows");
  rows.replaceChildren();
  for (const [k, v] of Object.entries(totals).sort((a, b) => (b[1] > a[1] ? 1 : b[1] < a[1] ? -1 : 0))) {
    const r = rows.insertRow();
    cell(r, k, split === "by_member" ? "Member" : "Model"); cell(r, usd(nanoUsd(v)), "Extra usage this month");
  }
}

export function init() {
  $("daily-split").addEventListener("change", renderDaily);
}
