// The admin API: every call sends the pasted admin token, and every path is built by
// `adminPath` / `orgPath`, which encode each part (an id is never pasted into a URL as is).
import { apiClient } from "../common.js";
import { TOKEN, state } from "./state.js";

export const authorization = () => ({ authorization: `Bearer ${sessionStorage.getItem(TOKEN)}` });
export const api = apiClient(authorization);

// "/admin/v1/<part>/<part>…", each part encoded; a trailing object is the query string
export function adminPath(...parts) {
  const query = typeof parts.at(-1) === "object" ? parts.pop() : null;
  const path = ["/admin/v1", ...parts.map((p) => encodeURIComponent(String(p)))].join("/");
  return query ? `${path}?${new URLSearchParams(query)}` : path;
}

// a path under the signed-in owner's organization: orgPath("extra-usage", "members", id)
export const orgPath = (...parts) => adminPath("orgs", state.me.org_id, ...parts);
