// The search form: the query image (picker, drop, paste), the options, and starting a search job.
import { ApiError, followJob, getJson, jobPath, request, showImage } from "./api.js";
import { collections, fillCollectionSelect, onCollections } from "./collections.js";
import { byId, clearErrors, el, showError } from "./dom.js";
import { hideJobView, onMoreLikeThis, renderJob, showJobError, startJobView } from "./job-view.js";

const form = byId("search-form");
const fileInput = byId("query-image");
const errors = byId("search-errors");
/** The indexed image to search from ("More like this"), when the query is not a file. */
let queryImageId = null;
let following = null;
let followedJobId = null;

export function initSearch({ onJobStarted }) {
  fileInput.addEventListener("change", () => {
    queryImageId = null;
    const file = fileInput.files[0];
    if (file) previewQuery(URL.createObjectURL(file), `Query image: ${file.name}`, true);
    else clearQuery();
  });
  initDrop();
  document.addEventListener("paste", onPaste);
  byId("clear-query").addEventListener("click", () => {
    fileInput.value = "";
    queryImageId = null;
    clearQuery();
    fileInput.focus();
  });
  byId("add-filter").addEventListener("click", () => addFilterRow().querySelector("input").focus());
  byId("cancel-job").addEventListener("click", cancelFollowedJob);
  onCollections((list) => fillCollectionSelect(byId("collection"), list));
  onMoreLikeThis((imageId, collection) => {
    setQueryImageId(imageId, collection);
    submit(onJobStarted);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit(onJobStarted);
  });
}

function previewQuery(src, caption, revokeAfterLoad) {
  const img = byId("query-preview");
  if (revokeAfterLoad) img.addEventListener("load", () => URL.revokeObjectURL(src), { once: true });
  if (src.startsWith("blob:")) img.src = src;
  else showImage(img, src);
  img.alt = caption;
  byId("query-caption").textContent = caption;
  byId("query-figure").hidden = false;
}

function clearQuery() {
  byId("query-figure").hidden = true;
  byId("query-preview").removeAttribute("src");
}

function setQueryFile(file) {
  const transfer = new DataTransfer();
  transfer.items.add(file);
  fileInput.files = transfer.files;
  fileInput.dispatchEvent(new Event("change"));
}

function setQueryImageId(imageId, collection) {
  fileInput.value = "";
  queryImageId = imageId;
  const select = byId("collection");
  if (collections().some((c) => c.name === collection)) select.value = collection;
  previewQuery(`/v1/collections/${encodeURIComponent(collection)}/images/${imageId}`, `Query image: ${imageId.slice(0, 12)} from ${collection}`, false);
}

function firstImage(files) {
  return [...(files || [])].find((file) => file.type.startsWith("image/")) ?? null;
}

function initDrop() {
  const zone = byId("drop-zone");
  const view = byId("search-view");
  view.addEventListener("dragover", (event) => {
    if (!event.dataTransfer?.types.includes("Files")) return;
    event.preventDefault();
    zone.classList.add("dragging");
  });
  view.addEventListener("dragleave", (event) => {
    if (!view.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  view.addEventListener("drop", (event) => {
    if (!event.dataTransfer?.types.includes("Files")) return;
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = firstImage(event.dataTransfer.files);
    if (file) setQueryFile(file);
    else showError(errors, { title: "That is not an image.", detail: "Drop a JPEG, PNG, WebP, GIF or BMP file." });
  });
}

/** Typing, and pasting text, into a field must never replace the query image. */
function isTextEntry(node) {
  if (!node) return false;
  if (node.isContentEditable || node.tagName === "TEXTAREA" || node.tagName === "SELECT") return true;
  const nonText = ["button", "checkbox", "color", "file", "image", "radio", "range", "reset", "submit"];
  return node.tagName === "INPUT" && !nonText.includes(node.type);
}

function onPaste(event) {
  if (byId("search-view").hidden || isTextEntry(document.activeElement)) return;
  const file = firstImage(event.clipboardData?.files);
  if (!file) return;
  event.preventDefault();
  setQueryFile(file);
}

function addFilterRow() {
  const number = document.querySelectorAll("#filter-rows .filter-row").length + 1;
  const field = (label, control) => {
    control.id = `filter-${number}-${label.toLowerCase()}`;
    return el("div", { className: "field" }, el("label", { htmlFor: control.id }, label), control);
  };
  const type = el("select", {}, new Option("text", "text"), new Option("number", "number"), new Option("true/false", "boolean"));
  const row = el("div", { className: "filter-row" },
    field("Key", el("input", { type: "text", className: "filter-key", autocomplete: "off", spellcheck: false })),
    field("Value", el("input", { type: "text", className: "filter-value", autocomplete: "off" })),
    field("Type", Object.assign(type, { className: "filter-type" })));
  row.append(el("button", {
    type: "button", className: "quiet",
    on: { click: () => { row.remove(); byId("add-filter").focus(); } },
  }, "Remove filter"));
  byId("filter-rows").append(row);
  return row;
}

/** The filter rows as {key: value}; throws a problem-shaped error naming the row to fix. */
function readFilters() {
  const filter = {};
  for (const row of document.querySelectorAll("#filter-rows .filter-row")) {
    const key = row.querySelector(".filter-key").value.trim();
    const raw = row.querySelector(".filter-value").value;
    const type = row.querySelector(".filter-type").value;
    if (!key && !raw) continue;
    if (!key) throw { title: "A filter has no key.", detail: `Give the key for the value "${raw}", or remove the filter.` };
    if (type === "number") {
      const value = Number(raw);
      if (raw.trim() === "" || !Number.isFinite(value)) throw { title: "A filter is not a number.", detail: `The value of "${key}" must be a number.` };
      filter[key] = value;
    } else if (type === "boolean") {
      if (!["true", "false"].includes(raw.trim())) throw { title: "A filter is not true or false.", detail: `The value of "${key}" must be true or false.` };
      filter[key] = raw.trim() === "true";
    } else {
      filter[key] = raw;
    }
  }
  return filter;
}

function buildRequest() {
  const body = new FormData();
  const file = fileInput.files[0];
  const instruction = byId("instruction").value.trim();
  if (file) body.append("image", file);
  else if (queryImageId) body.append("image_id", queryImageId);
  else if (!instruction) {
    throw { title: "Choose a query image, or write an instruction.", detail: "Pick, drop or paste an image; or type an instruction to search by text alone." };
  }
  if (instruction) body.append("instruction", instruction);
  body.append("collection", byId("collection").value || "default");
  body.append("limit", byId("limit").value);
  body.append("rerank", byId("rerank").checked ? "true" : "false");
  const minScore = byId("min-score");
  if (minScore.value !== "" || minScore.validity.badInput) {
    const value = Number(minScore.value);
    if (minScore.validity.badInput || !Number.isFinite(value) || value < -1 || value > 1) {
      throw { title: "The minimum score is not between −1 and 1.", detail: "Give a cosine similarity from −1 to 1, or leave it empty." };
    }
    body.append("min_score", String(value));
  }
  const filter = readFilters();
  if (Object.keys(filter).length) body.append("filter", JSON.stringify(filter));
  return body;
}

async function submit(onJobStarted) {
  clearErrors(errors);
  let body;
  try {
    body = buildRequest();
  } catch (problem) {
    showError(errors, problem);
    return;
  }
  const button = byId("search-button");
  button.disabled = true;
  try {
    const job = await (await request("/v1/searches", { method: "POST", body })).json();
    onJobStarted(job.id);
  } catch (error) {
    showError(errors, error);
  } finally {
    button.disabled = false;
  }
}

/** Show a job (from a submit, or from the URL on load) and follow it to its end. */
export async function showJob(jobId) {
  following?.abort();
  if (!jobId) {
    followedJobId = null;
    hideJobView();
    return;
  }
  const controller = new AbortController();
  following = controller;
  followedJobId = jobId;
  startJobView(jobId);
  try {
    await followJob(jobId, { signal: controller.signal, onUpdate: renderJob });
  } catch (error) {
    if (error.name === "AbortError") return;
    if (error instanceof ApiError && error.status === 404) {
      showJobError({
        title: "This search is no longer available.",
        detail: `Jobs are kept for a limited time (MMRAG_JOB_TTL_S) and this one has expired or never existed. Start a new search. (${error.detail})`,
      });
    } else {
      showJobError(error);
    }
  }
}

async function cancelFollowedJob() {
  if (!followedJobId) return;
  clearErrors(byId("job-errors"));
  try {
    renderJob(await getJson(jobPath(followedJobId), { method: "DELETE" }));
  } catch (error) {
    showJobError(error);
  }
}
