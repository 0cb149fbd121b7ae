// The curator console: keep the admin token for this tab, list the styles with their schedule, change, preview
// and retire them, and publish new styles or versions.
import { apiJSON, clearErrors, el, formatScore, pngDataURL, rejectionText, showErrors } from "./common.js";

// The admin token lives only in this tab's sessionStorage, under this key.
const TOKEN_KEY = "portrait-studio-admin-token";
const AUTH_ERRORS = new Set(["unauthorized", "forbidden", "admin_disabled"]);
const NO_TOKEN = "No token is set. Paste the admin token to manage styles.";

const tokenForm = document.getElementById("token-form");
const tokenInput = document.getElementById("token");
const tokenStatus = document.getElementById("token-status");
const stylesSection = document.getElementById("styles-table").closest("section");
const stylesBody = document.querySelector("#styles-table tbody");
const stylesError = document.getElementById("styles-error");
const stylesEmpty = document.getElementById("styles-empty");
const publishForm = document.getElementById("publish-form");
const manifestFields = document.getElementById("manifest-fields");
const publishButton = document.getElementById("publish");
const publishError = document.getElementById("publish-error");
const publishResult = document.getElementById("publish-result");

// --- Token ---

function setTokenStatus(text, problem = false) {
  tokenStatus.textContent = text;
  tokenStatus.classList.toggle("problem", problem);
}

function saveToken(event) {
  event.preventDefault();
  const token = tokenInput.value.trim();
  if (!token) {
    setTokenStatus("Paste the admin token first.", true);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  tokenInput.value = "";
  setTokenStatus("A token is set for this tab.");
  loadStyles();
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  stylesBody.replaceChildren();
  setTokenStatus(NO_TOKEN);
}

/** An admin API call with the tab's token; a refused token is reported next to the token box. */
async function admin(path, { method = "GET", json, body } = {}) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const answer = await apiJSON(path, { method, headers, body });
  if (AUTH_ERRORS.has(answer.body?.error?.code)) {
    setTokenStatus(`The service refused the request (${answer.status}): ${answer.body.error.message}`, true);
  }
  return answer;
}

function stylePath(id, suffix = "") {
  return `/admin/styles/${encodeURIComponent(id)}${suffix}`;
}

// --- Dates: datetime-local inputs hold UTC times ---

function toUTCInput(iso) {
  return iso ? new Date(iso).toISOString().slice(0, 16) : "";
}

function fromUTCInput(value) {
  return value ? new Date(`${value}Z`).toISOString().replace(/\.\d{3}Z$/, "Z") : null;
}

function formatWindow(from, until) {
  if (!from && !until) return "always";
  const utc = (iso) => `${toUTCInput(iso).replace("T", " ")} UTC`;
  return [from && `from ${utc(from)}`, until && `until ${utc(until)}`].filter(Boolean).join(" ");
}

// --- Styles table ---

async function loadStyles() {
  stylesError.replaceChildren();
  const answer = await admin("/admin/styles");
  if (!answer.ok) {
    showErrors(stylesSection, answer.body, stylesError);
    return;
  }
  stylesBody.replaceChildren(...answer.body.map(styleRow));
  stylesEmpty.hidden = answer.body.length > 0;
}

function cell(label, attributes, ...children) {
  return el("td", { "data-label": label, ...attributes }, ...children);
}

function button(className, text, styleId) {
  return el("button", { type: "button", class: className },
    text, el("span", { class: "visually-hidden" }, ` ${styleId}`));
}

function styleRow(style) {
  const controls = {
    from: el("input", { type: "datetime-local", class: "available-from", value: toUTCInput(style.available_from) }),
    until: el("input", { type: "datetime-local", class: "available-until", value: toUTCInput(style.available_until) }),
    version: el("select", { class: "default-version" }, ...style.versions.map((version) =>
      el("option", { value: version, selected: version === style.default_version }, `v${version}`))),
    save: button("save", "Save", style.id),
    retire: button("retire danger", "Retire", style.id),
    preview: button("preview", "Preview", style.id),
    previewResult: el("div", { class: "preview-result", "aria-live": "polite" }),
    error: el("div", { class: "row-error", role: "alert", "aria-live": "polite" }),
  };
  controls.retire.disabled = style.status === "retired";
  const row = el("tr", { "data-style-id": style.id },
    el("th", { scope: "row", "data-label": "Style" },
      el("code", { class: "style-id" }, style.id), el("span", { class: "style-title" }, style.title)),
    cell("Status", {}, el("span", { class: `status status-${style.status}` }, style.status)),
    cell("Versions", { class: "versions" }, style.versions.join(", ")),
    cell("Available", { class: "window" }, formatWindow(style.available_from, style.available_until)),
    cell("Change", { class: "edit" },
      el("label", { class: "inline-field" }, "From (UTC)", controls.from),
      el("label", { class: "inline-field" }, "Until (UTC)", controls.until),
      el("label", { class: "inline-field" }, "Default version", controls.version)),
    cell("Actions", { class: "actions" },
      el("div", { class: "button-row" }, controls.save, controls.retire, controls.preview),
      controls.error, controls.previewResult));
  wireRow(style, row, controls);
  return row;
}

function wireRow(style, row, controls) {
  controls.save.addEventListener("click", async () => {
    const answer = await rowAction(row, controls, controls.save,
      () => admin(stylePath(style.id), { method: "PATCH", json: scheduleChanges(controls) }));
    if (answer) loadStyles();
  });
  controls.retire.addEventListener("click", async () => {
    if (!confirm(`Retire ${style.id}? New portrait requests for it will be refused.`)) return;
    const answer = await rowAction(row, controls, controls.retire,
      () => admin(stylePath(style.id), { method: "DELETE" }));
    if (answer) loadStyles();
  });
  controls.preview.addEventListener("click", () => previewStyle(style, row, controls));
}

/** Only what the curator changed: an untouched field keeps its current setting (an emptied date clears it). */
function scheduleChanges({ from, until, version }) {
  const changes = {};
  if (from.value !== from.defaultValue) changes.available_from = fromUTCInput(from.value);
  if (until.value !== until.defaultValue) changes.available_until = fromUTCInput(until.value);
  if (!version.selectedOptions[0]?.defaultSelected) changes.default_version = Number(version.value);
  return changes;
}

/** Runs one row's request with its button disabled; the answer's body, or null after showing its error. */
async function rowAction(row, controls, trigger, request) {
  controls.error.replaceChildren();
  trigger.disabled = true;
  const answer = await request();
  trigger.disabled = false;
  if (answer.ok) return answer.body;
  showErrors(row, answer.body, controls.error);
  return null;
}

async function previewStyle(style, row, controls) {
  controls.previewResult.replaceChildren(el("p", { class: "hint" }, "Painting a preview of the sample face…"));
  const portrait = await rowAction(row, controls, controls.preview, () =>
    admin(stylePath(style.id, "/preview"), { method: "POST", json: { version: Number(controls.version.value) } }));
  controls.previewResult.replaceChildren(...(portrait ? [previewFigure(style, portrait)] : []));
}

function previewFigure(style, portrait) {
  const [image] = portrait.images;
  return el("figure", {},
    el("img", { src: pngDataURL(image.image_base64), alt: `Preview of ${portrait.style} on the sample face` }),
    el("figcaption", {},
      el("span", { class: "score" }, formatScore(image.identity_score)),
      image.rejected && el("span", { class: "rejected" }, `Rejected: ${rejectionText(image.rejected)}`)));
}

// --- Publishing ---

/** A manifest field's value as the manifest wants it, from the input's type. */
function manifestValue(input) {
  const value = input.value.trim();
  if (input.type === "number") return Number(value);
  if (input.type === "datetime-local") return fromUTCInput(value);
  if (input.name === "tags") return value.split(",").map((tag) => tag.trim()).filter(Boolean);
  return value;
}

/** The manifest from the form's fields; a field's name is its path in the manifest, e.g. "defaults.t1". */
function manifestFromFields() {
  const manifest = {};
  for (const input of manifestFields.elements) {
    if (!input.name || !input.value.trim()) continue;
    const path = input.name.split(".");
    const leaf = path.pop();
    let node = manifest;
    for (const key of path) node = node[key] ??= {};
    node[leaf] = manifestValue(input);
  }
  return manifest;
}

function publishData() {
  const data = new FormData();
  const [manifestFile] = publishForm.elements.manifest_file.files;
  // JSON is valid YAML, so the fields can travel as the manifest file the API expects.
  const manifest = manifestFile
    ?? new File([JSON.stringify(manifestFromFields(), null, 2)], "style.yaml", { type: "application/yaml" });
  data.append("manifest", manifest);
  for (const name of ["lora", "preview"]) {
    const [file] = publishForm.elements[name].files;
    if (file) data.append(name, file);
  }
  return data;
}

async function publish(event) {
  event.preventDefault();
  clearErrors(publishForm, publishError);
  publishResult.textContent = "";
  publishButton.disabled = true;
  const answer = await admin("/admin/styles", { method: "POST", body: publishData() });
  publishButton.disabled = false;
  if (!answer.ok) {
    showErrors(publishForm, answer.body, publishError);
    return;
  }
  const { versioned_id: versionedId, sha256, lora_rank: rank } = answer.body;
  publishResult.textContent = `Published ${versionedId} — sha256 ${sha256}, rank ${rank}`;
  publishForm.reset();
  loadStyles();
}

// --- Wiring ---

tokenForm.addEventListener("submit", saveToken);
document.getElementById("token-forget").addEventListener("click", forgetToken);
document.getElementById("refresh").addEventListener("click", loadStyles);
publishForm.addEventListener("submit", publish);

if (sessionStorage.getItem(TOKEN_KEY)) {
  setTokenStatus("A token is set for this tab.");
  loadStyles();
} else {
  setTokenStatus(NO_TOKEN);
}
