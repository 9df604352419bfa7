// Money, names and times as an owner reads them. Amounts stay the API's decimal strings:
// never through a float (they are exact to the nano-dollar).

// "1234567.50" -> "$1,234,567.50"
export function usd(v) {
  const [whole, frac] = String(v).split(".");
  const sign = whole.startsWith("-") ? "-" : "";
  const digits = whole.replace("-", "").replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return `${sign}$${digits}${frac === undefined ? "" : "." + frac}`;
}
export const money = (v) => (v === null || v === undefined ? "Unlimited" : usd(v));

// a USD string as nano-USD (BigInt), and back to the API's USD string (at least 2 decimals)
export function nanoOf(usdString) {
  const [whole, frac = ""] = String(usdString).replace("-", "").split(".");
  const v = BigInt(whole) * 1000000000n + BigInt(frac.padEnd(9, "0").slice(0, 9));
  return String(usdString).startsWith("-") ? -v : v;
}
export function nanoUsd(n) {
  const v = BigInt(n);
  const a = v < 0n ? -v : v;
  let frac = (a % 1000000000n).toString().padStart(9, "0").replace(/0+$/, "");
  if (frac.length < 2) frac = frac.padEnd(2, "0");
  return `${v < 0n ? "-" : ""}${a / 1000000000n}.${frac}`;
}

export const tierName = (t) => t.charAt(0).toUpperCase() + t.slice(1);
// an epoch second as "MM-DD HH:MM" (UTC), an ISO time as its date
export const at = (epoch) => new Date(epoch * 1000).toISOString().slice(5, 16).replace("T", " ");
export const stamp = (epoch) => new Date(epoch * 1000).toISOString().slice(0, 16).replace("T", " ");
export const day = (iso) => (iso ? iso.slice(0, 10) : "");
