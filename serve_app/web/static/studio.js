// The studio page: choose a face image (or up to four, one per person, for a group portrait) and a style, generate
// portraits while watching the progress, and compare the results with their layout masks. Each generation is a job
// whose id goes into the page's URL (?job=<id>), so a reload, a link or another tab shows the same job: its progress
// so far, then live, and its portraits.
import { apiJSON, clearErrors, el, errorBody, formatScore, pngDataURL, rejectionText, showErrors } from "./common.js";

const form = document.getElementById("portrait-form");
const imageInput = document.getElementById("image-input");
const dropZone = document.getElementById("drop-zone");
const faceList = document.getElementById("faces");
const imageName = document.getElementById("image-name");
const imageError = document.getElementById("image-error");
const addFaceButton = document.getElementById("add-face");
const addFaceHint = document.getElementById("add-face-hint");
const stylesBox = document.getElementById("styles");
const styleError = document.getElementById("style-error");
const identityWeight = document.getElementById("identity_weight");
const identityWeightValue = document.getElementById("identity_weight-value");
const seedInput = document.getElementById("seed");
const generateButton = document.getElementById("generate");
const formError = document.getElementById("form-error");
const progressPanel = document.getElementById("progress");
const jobStatus = document.getElementById("job-status");
const cancelButton = document.getElementById("cancel-job");
const stepBar = document.getElementById("step-bar");
const stepLabel = document.getElementById("step-label");
const retryNote = document.getElementById("retry-note");
const resultsPanel = document.getElementById("results-panel");
const resultSummary = document.getElementById("result-summary");
const sameAgain = document.getElementById("same-again");
const results = document.getElementById("results");

const maxImageBytes = Number(document.body.dataset.maxImageBytes);
const maxCandidates = Number(document.body.dataset.maxCandidates);
// The file picker's accept list is the one place that names the image types the API takes.
const acceptedTypes = new Set(imageInput.accept.split(","));
// The API's limit on the people of one portrait, one face image each.
const MAX_PEOPLE = 4;
// How the API names one image among several: `image[i]`, counting from 0.
const PERSON_FIELD = /^image\[(\d+)\]$/;
// Optional controls, named like the API's form fields; an empty one is left out so the server default applies.
const CONTROL_FIELDS = ["num_candidates", "top_k", "identity_weight", "t1", "seed", "upscale", "subject"];
const PLACEMENT_TEXT = {
  detected: "face fused where the painting drew it",
  layout_mask: "no face drawn: placed in its layout mask",
};
const MASK_TINT = [219, 39, 119];
const MASK_OPACITY = 0.6;
const JOB_PARAM = "job";
const QUEUE_POLL_MS = 1000;
const ACTIVE = new Set(["queued", "running"]);
const STATUS_TEXT = {
  queued: (job) => `Waiting in the queue: number ${job.queue_position} in line.`,
  running: () => "Running.",
  canceling: () => "Canceling…",
  succeeded: () => "Done.",
  failed: () => "Failed.",
  canceled: () => "Canceled: this job was stopped before its portraits were ready.",
  disconnected: () => "The connection to this job was lost. Reload the page to follow it again.",
};
// What a link to a job the service does not have (any more) means to the person who opened it.
const JOB_GONE = {
  job_not_found: "There is no such job: check the link, or generate new portraits.",
  job_expired: "This job ended a while ago and its portraits have been deleted. Generate them again to see them.",
};

// The people of the portrait, left to right: each {file (null until one is chosen), url (its preview), noPreview}.
let faces = [];
// The person whose face the file picker, the drop zone and the sample face set: one of `faces`, null with none.
let target = null;
let stylesById = new Map();
let lastSeed = null;
// The job the page shows: {id, source (its EventSource), job (its status as last shown), poll (timer while queued)}.
let followed = null;

// --- Face image ---

function formatBytes(bytes) {
  return bytes >= 1024 * 1024 ? `${(bytes / (1024 * 1024)).toFixed(1)} MB` : `${Math.ceil(bytes / 1024)} KB`;
}

/** Why the API would refuse this file, or null when it is fine to upload. */
function imageProblem(file) {
  if (!acceptedTypes.has(file.type)) return `“${file.name}” is not a JPEG, PNG, WebP, BMP or TIFF image.`;
  if (file.size > maxImageBytes) {
    return `This image is ${formatBytes(file.size)}; images can be at most ${formatBytes(maxImageBytes)}.`;
  }
  return null;
}

function chooseImage(file) {
  const problem = imageProblem(file);
  const person = faces.length > 1 ? `Person ${faces.indexOf(target) + 1}: ` : "";
  imageError.textContent = problem ? person + problem : "";
  setFace(problem ? null : file);
}

/** Gives the target person this face (null: none yet); the first face makes the first person. */
function setFace(file) {
  const face = { file, url: file && URL.createObjectURL(file), noPreview: false };
  if (target) {
    releaseFace(target);
    faces[faces.indexOf(target)] = face;
  } else {
    faces.push(face);
  }
  target = face;
  forgetFacelessPeople();
  renderFaces();
}

function releaseFace(face) {
  if (face.url) URL.revokeObjectURL(face.url);
}

// People still waiting for a face make no group on their own: the page is back to "no image chosen yet".
function forgetFacelessPeople() {
  if (faces.some((face) => face.file)) return;
  faces = [];
  target = null;
}

function addFace() {
  const face = { file: null, url: null, noPreview: false };
  faces.push(face);
  aimAt(face);
}

/** Makes `face` the one the picker sets, and takes the keyboard there. */
function aimAt(face) {
  target = face;
  imageInput.value = ""; // choosing the file chosen last, for another person, must still count as a choice
  renderFaces();
  imageInput.focus();
}

function removeFace(face) {
  const index = faces.indexOf(face);
  releaseFace(face);
  faces.splice(index, 1);
  if (target === face) target = faces.find((other) => !other.file) ?? faces.at(-1) ?? null;
  forgetFacelessPeople();
  imageError.textContent = ""; // it may name people by places that changed
  renderFaces();
  const next = faces[index] ?? faces[index - 1];
  if (next) focusFaceButton(next, "remove");
  else imageInput.focus();
}

function moveFace(face, step) {
  const index = faces.indexOf(face);
  [faces[index], faces[index + step]] = [faces[index + step], faces[index]];
  imageError.textContent = "";
  renderFaces();
  focusFaceButton(face, step < 0 ? "left" : "right");
}

// The cards are drawn anew on every change: the keyboard goes back to the button used, on its face's new card.
function focusFaceButton(face, action) {
  const card = faceList.children[faces.indexOf(face)];
  const button = card.querySelector(`button[data-action="${action}"]:not(:disabled)`);
  (button ?? card.querySelector("button:not(:disabled)")).focus();
}

function renderFaces() {
  faceList.replaceChildren(...faces.map(faceCard));
  imageName.textContent = pickerText();
  addFaceButton.disabled = faces.length === 0 || faces.length >= MAX_PEOPLE;
  addFaceHint.textContent = addFaceText();
}

/** What the file picker, the drop zone and the sample face do now. */
function pickerText() {
  const person = faces.indexOf(target) + 1;
  if (!target) return "No image chosen yet.";
  if (!target.file) {
    return `Now choose the face of person ${person}: drop an image, choose a file or try the sample face.`;
  }
  return faces.length > 1 ? `A new image replaces the face of person ${person}.` : "";
}

function addFaceText() {
  if (faces.length === 0) return `Choose the first face; a group portrait takes up to ${MAX_PEOPLE}, one per person.`;
  if (faces.length >= MAX_PEOPLE) {
    return `${MAX_PEOPLE} faces is the most a portrait takes: remove one to add another.`;
  }
  return `For a group portrait: up to ${MAX_PEOPLE} faces, one per person, in the order they stand, left to right.`;
}

function faceCard(face, index) {
  const person = index + 1;
  return el("li", { class: face === target ? "face target" : "face" },
    faceFigure(face, index),
    el("div", { class: "face-actions" },
      faceButton("left", "←", `Move person ${person} left`, index === 0, () => moveFace(face, -1)),
      faceButton("right", "→", `Move person ${person} right`, index === faces.length - 1, () => moveFace(face, 1)),
      faceButton("replace", "Replace", `Replace the face of person ${person}`, false, () => aimAt(face)),
      faceButton("remove", "Remove", `Remove person ${person}`, false, () => removeFace(face))));
}

function faceFigure(face, index) {
  const fileName = el("span", { class: "face-file" }, faceFileText(face));
  const figure = el("figure", { class: "face-figure" },
    el("figcaption", {}, el("strong", { class: "face-label" }, `Person ${index + 1}`), fileName));
  if (!face.file) {
    figure.prepend(el("span", { class: "face-placeholder", "aria-hidden": "true" }, "?"));
  } else if (!face.noPreview) {
    // The first person's picture keeps the id of the single face the page once had.
    const image = el("img", { class: "face-preview", id: index === 0 ? "image-preview" : null, src: face.url,
      alt: `The face of person ${index + 1}` });
    image.addEventListener("error", () => {
      face.noPreview = true;
      image.hidden = true;
      fileName.textContent = faceFileText(face);
    });
    figure.prepend(image);
  }
  return figure;
}

// Browsers cannot show every accepted format (TIFF): the file still goes to the API, which can read it.
function faceFileText(face) {
  if (!face.file) return "No image yet";
  return face.noPreview ? `${face.file.name} (no preview for this format in your browser)` : face.file.name;
}

function faceButton(action, text, label, disabled, onClick) {
  const button = el("button", { type: "button", class: "face-action", "data-action": action, "aria-label": label,
    title: label, disabled }, text);
  button.addEventListener("click", onClick);
  return button;
}

async function useSampleFace() {
  imageInput.value = "";
  try {
    const response = await fetch("/sample_face.png");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const blob = await response.blob();
    chooseImage(new File([blob], "sample_face.png", { type: blob.type || "image/png" }));
  } catch {
    imageError.textContent = "The sample face could not be loaded. Please try again.";
  }
}

function onDrop(event) {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  const [file] = event.dataTransfer.files;
  if (!file) return;
  imageInput.value = "";
  chooseImage(file);
}

function onDragOver(event) {
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
  dropZone.classList.add("dragging");
}

// --- Styles ---

function selectedStyleId() {
  return stylesBox.querySelector("input[name=style]:checked")?.value ?? null;
}

function styleCard(style, checked) {
  const preview = style.preview_url
    ? el("img", { class: "style-preview", src: style.preview_url, alt: "", loading: "lazy" })
    : el("span", { class: "style-placeholder", "aria-hidden": "true" });
  return el(
    "label",
    { class: "style-card", "data-style-id": style.id },
    preview,
    el("span", { class: "style-heading" },
      el("input", { type: "radio", name: "style", value: style.id, checked }),
      el("span", { class: "style-title" }, style.title)),
    el("span", { class: "style-description" }, style.description),
    el("span", { class: "tags" }, ...style.tags.map((tag) => el("span", { class: "tag" }, tag))),
  );
}

/** Loads the live styles, keeping the current choice when that style is still live. */
async function loadStyles() {
  const answer = await apiJSON("/v1/styles");
  if (!answer.ok) {
    styleError.textContent = answer.body.error.message;
    return;
  }
  styleError.textContent = "";
  const selected = selectedStyleId();
  stylesById = new Map(answer.body.map((style) => [style.id, style]));
  stylesBox.replaceChildren(
    ...(answer.body.length
      ? answer.body.map((style) => styleCard(style, style.id === selected))
      : [el("p", { class: "empty" }, "No style is live right now. Please come back a little later.")]),
  );
}

function prefillFromStyle(event) {
  const style = stylesById.get(event.target.value);
  if (!style) return;
  identityWeight.value = style.defaults.identity_weight;
  form.elements.t1.value = style.defaults.t1;
  showIdentityWeight();
}

function showIdentityWeight() {
  identityWeightValue.value = Number(identityWeight.value).toFixed(2);
}

// --- Generating ---

/** Client-side checks the API would make anyway; true when the request can go. */
function readyToGenerate() {
  const faceless = faces.findIndex((face) => !face.file);
  if (!faces.length) imageError.textContent = "Choose a face image first, or try the sample face.";
  else if (faceless >= 0) imageError.textContent = `Choose the face of person ${faceless + 1}, or remove them.`;
  if (!selectedStyleId()) styleError.textContent = "Pick a style first.";
  return Boolean(faces.length && faceless < 0 && selectedStyleId());
}

function portraitForm() {
  const data = new FormData();
  for (const { file } of faces) data.append("image", file, file.name);
  data.append("style", selectedStyleId());
  for (const name of CONTROL_FIELDS) {
    const value = form.elements[name].value.trim();
    if (value) data.append(name, value);
  }
  data.append("return_masks", "true");
  return data;
}

async function onGenerate(event) {
  event.preventDefault();
  clearErrors(form, formError);
  if (!readyToGenerate()) return;
  setRunning(true);
  const answer = await apiJSON("/v1/jobs", { method: "POST", body: portraitForm() });
  if (!answer.ok) {
    showFormErrors(answer.body);
    setRunning(false);
    return;
  }
  history.pushState(null, "", `?${new URLSearchParams({ [JOB_PARAM]: answer.body.id })}`);
  follow(answer.body);
}

function showFormErrors(body) {
  showErrors(form, withPeopleNamed(body), formError);
}

/** An error whose fields name one image among several (`image[i]`) shows next to the faces, naming the person. */
function withPeopleNamed(body) {
  const fields = body.error.fields?.map(({ field, message }) => {
    const index = PERSON_FIELD.exec(field)?.[1];
    if (index === undefined) return { field, message };
    return { field: "image", message: `Person ${Number(index) + 1}: ${message.replace(/^image \d+ of \d+: /, "")}` };
  });
  return fields ? { error: { ...body.error, fields } } : body;
}

function setRunning(running) {
  generateButton.disabled = running;
  sameAgain.disabled = running;
  form.setAttribute("aria-busy", String(running));
}

// --- Jobs ---

function jobPath(id) {
  return `/v1/jobs/${encodeURIComponent(id)}`;
}

function jobIdInURL() {
  return new URLSearchParams(location.search).get(JOB_PARAM);
}

/** Shows the job the page's URL names, if any: on load (a reload, a link, another tab) and on Back or Forward. */
async function showJobInURL() {
  stopFollowing();
  clearErrors(form, formError);
  progressPanel.hidden = true;
  resultsPanel.hidden = true;
  const id = jobIdInURL();
  setRunning(Boolean(id));
  if (!id) return;
  const answer = await apiJSON(jobPath(id));
  if (jobIdInURL() !== id) return; // the URL changed while the job was asked for
  if (answer.ok) {
    follow(answer.body);
  } else {
    showFormErrors(jobProblem(answer.body));
    setRunning(false);
  }
  (answer.ok ? progressPanel : formError).scrollIntoView();
}

function jobProblem(body) {
  const { code, message } = body.error;
  return errorBody(code, JOB_GONE[code] ?? message);
}

/** Follows a job's events from its first (a reload or another tab replays them) to its outcome. */
function follow(job) {
  stopFollowing();
  setRunning(true);
  resetProgress();
  const source = new EventSource(`${jobPath(job.id)}/events`);
  followed = { id: job.id, source, job, poll: null };
  showJob(job);
  for (const [name, show] of Object.entries(PROGRESS_EVENTS)) {
    source.addEventListener(name, (event) => {
      if (followed.job.status === "queued") showJob({ status: "running" });
      show(JSON.parse(event.data));
    });
  }
  source.addEventListener("result", (event) => {
    endJob("succeeded");
    showResult(JSON.parse(event.data));
  });
  source.addEventListener("error", onJobError);
}

/** The job's own `error` event (its outcome), or EventSource's report of a broken connection. */
function onJobError(event) {
  if (event instanceof MessageEvent) {
    const body = JSON.parse(event.data);
    const canceled = body.error.code === "job_canceled";
    endJob(canceled ? "canceled" : "failed");
    if (!canceled) showFormErrors(body);
  } else if (event.target.readyState === EventSource.CLOSED) {
    // EventSource reconnects by itself (resuming after the last event) unless the service refused the stream.
    endJob("disconnected");
  }
}

function endJob(status) {
  showJob({ status });
  stopFollowing();
  setRunning(false);
}

function stopFollowing() {
  if (!followed) return;
  // The service ends the stream after the job's outcome; unless closed, EventSource would reconnect for more.
  followed.source.close();
  clearTimeout(followed.poll);
  followed = null;
}

/** Shows a job's status; while it is queued, asks again for its place in the queue. */
function showJob(job) {
  clearTimeout(followed.poll);
  followed.job = job;
  jobStatus.textContent = STATUS_TEXT[job.status](job);
  cancelButton.hidden = !ACTIVE.has(job.status);
  if (job.status === "queued") followed.poll = setTimeout(refreshJob, QUEUE_POLL_MS);
}

async function refreshJob() {
  const { id } = followed;
  const answer = await apiJSON(jobPath(id));
  // A cancel asked for meanwhile stays shown until the job's events say that it ended.
  if (answer.ok && followed?.id === id && followed.job.status !== "canceling") showJob(answer.body);
}

async function cancelJob() {
  const { id, job } = followed;
  showJob({ status: "canceling" });
  const answer = await apiJSON(`${jobPath(id)}/cancel`, { method: "POST" });
  if (answer.ok || followed?.id !== id) return;
  showFormErrors(answer.body);
  showJob(job);
}

// --- Progress ---

function stageItem(stage) {
  return progressPanel.querySelector(`li.stage[data-stage="${CSS.escape(stage)}"]`);
}

function resetProgress() {
  progressPanel.hidden = false;
  for (const item of progressPanel.querySelectorAll("li.stage")) item.classList.remove("active", "done");
  stepBar.max = 1;
  stepBar.value = 0;
  stepLabel.textContent = "";
  retryNote.hidden = true;
}

const PROGRESS_EVENTS = {
  stage_started({ stage }) {
    stageItem(stage)?.classList.add("active");
  },
  stage_finished({ stage }) {
    stageItem(stage)?.classList.remove("active");
    stageItem(stage)?.classList.add("done");
  },
  step({ step, total }) {
    stepBar.max = total;
    stepBar.value = step;
    stepLabel.textContent = `step ${step} of ${total}`;
  },
  retry({ reason }) {
    retryNote.textContent = `A stage hit a snag (${reason}) and was restarted.`;
    retryNote.hidden = false;
  },
};

// --- Results ---

function showResult(response) {
  lastSeed = response.seed;
  const totalMs = Object.values(response.timings).reduce((sum, ms) => sum + ms, 0);
  resultSummary.textContent =
    `Style ${response.style} · first seed ${response.seed} · ${(totalMs / 1000).toFixed(1)} s in total`;
  results.replaceChildren(...response.images.map((image, index) => resultCard(image, index, response.style)));
  sameAgain.textContent = `Same again (seed ${response.seed})`;
  sameAgain.hidden = false;
  resultsPanel.hidden = false;
}

function resultCard(image, index, style) {
  const src = pngDataURL(image.image_base64);
  const figure = el("figure", { class: "portrait-frame" },
    el("img", { class: "portrait", src, alt: `Portrait ${index + 1}` }));
  const card = el("article", { class: "result" },
    figure,
    el("p", { class: "result-meta" },
      el("span", { class: "score" }, formatScore(image.identity_score)),
      el("span", { class: "seed" }, `seed ${image.seed}`)),
    image.people?.length > 1 && peopleScores(image.people),
    image.rejected && el("p", { class: "rejected" }, `Rejected: ${rejectionText(image.rejected)}`));
  if (image.layout_mask_base64) card.append(maskToggle(figure, image.layout_mask_base64));
  card.append(el("a", { class: "download", href: src, download: `portrait-${style}-${image.seed}.png` },
    "Download PNG"));
  return card;
}

/** Each person's identity score, left to right; how like another person's face theirs came out in its title. */
function peopleScores(people) {
  return el("p", { class: "people-scores" }, ...people.map((person, index) =>
    el("span", { class: "person-score", title: personDetails(person) },
      `Person ${index + 1} ${person.identity_score.toFixed(3)}`)));
}

function personDetails({ bleed, face_placement: placement }) {
  const likeness = bleed == null ? null : `bleed ${bleed.toFixed(3)} (likeness to another person)`;
  return [likeness, PLACEMENT_TEXT[placement]].filter(Boolean).join("; ") || null;
}

/** Adds the layout mask overlay to a portrait's figure; returns the checkbox (in its label) that shows it. */
function maskToggle(figure, maskBase64) {
  const canvas = el("canvas", { class: "mask-overlay", "aria-hidden": "true", hidden: true });
  figure.append(canvas);
  const toggle = el("input", { type: "checkbox", class: "mask-toggle" });
  toggle.addEventListener("change", () => {
    canvas.hidden = !toggle.checked;
  });
  const label = el("label", { class: "toggle" }, toggle, "Show layout mask");
  drawMask(canvas, maskBase64).catch(() => label.remove());
  return label;
}

/** Draws a greyscale mask as a coloured tint whose opacity follows the mask's brightness. */
async function drawMask(canvas, maskBase64) {
  const mask = new Image();
  mask.src = pngDataURL(maskBase64);
  await mask.decode();
  canvas.width = mask.naturalWidth;
  canvas.height = mask.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(mask, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    const luminance = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
    [data[i], data[i + 1], data[i + 2]] = MASK_TINT;
    data[i + 3] = luminance * MASK_OPACITY;
  }
  context.putImageData(pixels, 0, 0);
}

function generateSameAgain() {
  seedInput.value = lastSeed;
  form.requestSubmit();
}

// --- Wiring ---

document.getElementById("max-image-size").textContent = formatBytes(maxImageBytes);
for (const id of ["num_candidates", "top_k"]) document.getElementById(id).max = maxCandidates;
showIdentityWeight();
renderFaces();

imageInput.addEventListener("change", () => {
  if (imageInput.files[0]) chooseImage(imageInput.files[0]);
});
addFaceButton.addEventListener("click", addFace);
dropZone.addEventListener("dragover", onDragOver);
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
dropZone.addEventListener("drop", onDrop);
document.getElementById("sample-face").addEventListener("click", useSampleFace);
stylesBox.addEventListener("change", prefillFromStyle);
identityWeight.addEventListener("input", showIdentityWeight);
form.addEventListener("submit", onGenerate);
sameAgain.addEventListener("click", generateSameAgain);
cancelButton.addEventListener("click", cancelJob);
window.addEventListener("popstate", showJobInURL);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") loadStyles();
});
loadStyles();
showJobInURL();
