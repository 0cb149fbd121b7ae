// Helpers shared by the studio and the curator console: DOM building, API calls, error display and formatting.
// API data only ever reaches the page as text nodes or attribute values, never as markup.

/** An element with attributes (null, undefined and false are left out; true gives an empty attribute) and
 * children (nodes, or strings that become text nodes; null, undefined and false are skipped). */
export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
  return element;
}

/** An error body shaped like the API's. */
export function errorBody(code, message) {
  return { error: { code, message } };
}

function connectionError() {
  return errorBody("network_error", "Could not reach Portrait Studio. Check your connection and try again.");
}

/** Fetches a JSON answer: `{ok, status, body}`, where a failed request's body is always an API-shaped error. */
export async function apiJSON(url, options = {}) {
  let response;
  try {
    response = await fetch(url, options);
  } catch {
    return { ok: false, status: 0, body: connectionError() };
  }
  return readResponse(response);
}

/** Reads a fetched answer as `{ok, status, body}`; an answer that is not the expected JSON becomes an error. */
async function readResponse(response) {
  let body;
  try {
    body = JSON.parse(await response.text());
  } catch {
    body = undefined;
  }
  if (response.ok && body !== undefined) return { ok: true, status: response.status, body };
  if (typeof body?.error?.message !== "string") {
    body = errorBody(`http_${response.status}`, `The service gave an unexpected answer (HTTP ${response.status}).`);
  }
  return { ok: false, status: response.status, body: withRetryHint(body, response.headers.get("Retry-After")) };
}

function withRetryHint(body, retryAfter) {
  const seconds = Number(retryAfter);
  if (!retryAfter || !Number.isFinite(seconds)) return body;
  const message = `${body.error.message} Please try again in ${seconds} second${seconds === 1 ? "" : "s"}.`;
  return { error: { ...body.error, message } };
}

/** Empties every field error under `root` and the general error area. */
export function clearErrors(root, general) {
  for (const slot of root.querySelectorAll("[data-error-for]")) slot.textContent = "";
  general.replaceChildren();
}

/** Shows an API error: each field's message in its `[data-error-for]` slot under `root`; the overall message,
 * and field messages that have no slot, in the general area (a summary that screen readers announce). */
export function showErrors(root, body, general) {
  const { message, fields = [] } = body.error;
  const lines = [message];
  for (const { field, message: fieldMessage } of fields) {
    const slot = root.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
    if (slot) slot.textContent = fieldMessage;
    else lines.push(`${field}: ${fieldMessage}`);
  }
  general.replaceChildren(...lines.map((line) => el("p", {}, line)));
}

export function pngDataURL(base64) {
  return `data:image/png;base64,${base64}`;
}

export function formatScore(score) {
  return `Identity ${score.toFixed(3)}`;
}

const REJECTIONS = {
  no_face: "no face found",
  several_faces: "several faces",
  extreme_pose: "extreme pose",
  identity_swap: "a face looks more like another person",
  unsafe_content: "flagged by the safety check",
};

/** Why a portrait was rejected, in words. */
export function rejectionText(reason) {
  return REJECTIONS[reason] ?? reason.replaceAll("_", " ");
}
