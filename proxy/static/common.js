// What the admin page and the member's usage page share: element lookup, API calls that turn
// an error answer into an ApiError, and the error and notice banners.
export const $ = (id) => document.getElementById(id);

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// an `api(method, path, body)` that sends the headers `auth()` gives (the page's credential)
export function apiClient(auth) {
  return async function api(method, path, body) {
    const resp = await fetch(path, {
      method,
      headers: { ...auth(), "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const doc = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new ApiError(resp.status, doc?.error?.message || resp.statusText);
    return doc;
  };
}

// the #error and #notice banners; errors in the page's own plain words
export function banners(plainWords) {
  return {
    // one banner at a time: an error clears the last notice, a notice the last error
    showError(err) {
      const box = $("error");
      box.textContent = err ? plainWords(err) : "";
      box.hidden = !err;
      if (err) { $("notice").textContent = ""; $("notice").hidden = true; }
    },
    notice(text) {
      const box = $("notice");
      box.textContent = text;
      box.hidden = !text;
      if (text) { $("error").textContent = ""; $("error").hidden = true; }
    },
  };
}
