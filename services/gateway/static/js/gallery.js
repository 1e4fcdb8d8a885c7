// The gallery: collections with their counts, uploading images into one, and browsing it page by page.
import { followJob, getJson, request, showImage, upload } from "./api.js";
import { fillCollectionSelect, onCollections, refreshCollections } from "./collections.js";
import { byId, clearErrors, el, imageLabel, showError } from "./dom.js";

const PAGE_SIZE = 24;
const COLLECTION_NAME = /^[A-Za-z][A-Za-z0-9_]{0,62}$/;
/** Cursors of the pages before the current one, and the current one's (null: the first page). */
let earlierCursors = [];
let pageCursor = null;
let nextCursor = null;
/** Only the latest page asked for is shown, whichever answer arrives last. */
let latestRequest = 0;

export function initGallery() {
  onCollections(renderCollections);
  byId("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    uploadImages();
  });
  byId("browse-collection").addEventListener("change", () => browse(byId("browse-collection").value));
  byId("next-page").addEventListener("click", () => {
    earlierCursors.push(pageCursor);
    loadPage(nextCursor, byId("next-page"));
  });
  byId("previous-page").addEventListener("click", () => loadPage(earlierCursors.pop() ?? null, byId("previous-page")));
}

/** Called when the gallery is shown. */
export async function openGallery() {
  clearErrors(byId("collection-errors"));
  try {
    await refreshCollections();
  } catch (error) {
    showError(byId("collection-errors"), error);
    return;
  }
  if (byId("browse-collection").value) browse(byId("browse-collection").value);
}

function renderCollections(list) {
  byId("no-collections").hidden = list.length > 0;
  byId("collection-list").replaceChildren(...list.map((c) => el("li", { className: "collection" },
    el("p", { className: "collection-name" }, c.name),
    el("p", {}, `${c.count.toLocaleString()} image${c.count === 1 ? "" : "s"} · ${c.model} · ${c.dim} dimensions · ${c.metric}`),
    el("button", {
      type: "button",
      attrs: { "aria-label": `Browse ${c.name}` },
      on: { click: () => { byId("browse-collection").value = c.name; browse(c.name); byId("browse-heading").scrollIntoView(); } },
    }, "Browse"))));
  byId("collection-names").replaceChildren(...list.map((c) => el("option", { value: c.name })));
  fillCollectionSelect(byId("browse-collection"), list);
}

function setProgress(fraction, text) {
  byId("upload-progress-field").hidden = false;
  byId("upload-progress").value = fraction;
  byId("upload-status").textContent = text;
}

function showFailed(failed) {
  byId("upload-failed").hidden = failed.length === 0;
  byId("upload-failed-list").replaceChildren(...failed.map((item) => el("li", {},
    el("span", { className: "filename" }, item.filename || item.id || "(unnamed)"), `: ${item.reason}`)));
}

async function uploadImages() {
  const errors = byId("upload-errors");
  clearErrors(errors);
  showFailed([]);
  const collection = byId("upload-collection").value.trim();
  const files = [...byId("upload-files").files];
  if (!COLLECTION_NAME.test(collection)) {
    showError(errors, { title: "The collection name is not valid.", detail: "Use 1–63 letters, digits or underscores, starting with a letter." });
    return;
  }
  if (files.length === 0) {
    showError(errors, { title: "Choose images to upload." });
    return;
  }
  const form = new FormData();
  for (const file of files) form.append("files", file);
  const metadata = byId("upload-metadata").files[0];
  if (metadata) form.append("metadata", metadata);
  const button = byId("upload-form").querySelector("button[type=submit]");
  button.disabled = true;
  try {
    setProgress(0, `Uploading ${files.length} file${files.length === 1 ? "" : "s"}…`);
    const job = await upload(`/v1/collections/${encodeURIComponent(collection)}/images`, form, (fraction) =>
      setProgress(fraction, `Uploading: ${Math.round(fraction * 100)}%`));
    const final = await followJob(job.id, {
      onUpdate: (current) => {
        const { done, total } = current.progress;
        if (current.status === "queued" || current.status === "running") {
          setProgress(total ? done / total : 0, `Indexing: ${done} of ${total}`);
        }
      },
    });
    showFailed(final.progress.failed);
    if (final.status === "succeeded") {
      const r = final.result;
      setProgress(1, `Done: ${r.indexed} indexed, ${r.duplicates} already there, ${r.failed} failed.`);
    } else {
      setProgress(0, final.status === "canceled" ? "Canceled." : "Failed.");
      if (final.error) showError(errors, final.error);
    }
    byId("upload-files").value = "";
    byId("upload-metadata").value = "";
    await refreshCollections();
    if (byId("browse-collection").value === collection) browse(collection);
  } catch (error) {
    setProgress(0, "Failed.");
    showError(errors, error);
  } finally {
    button.disabled = false;
  }
}

function browse(collection) {
  earlierCursors = [];
  return loadPage(null, null, collection);
}

async function loadPage(cursor, focusAfter, collection = byId("browse-collection").value) {
  const errors = byId("browse-errors");
  clearErrors(errors);
  if (!collection) return;
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (cursor) query.set("cursor", cursor);
  byId("browse-status").textContent = "Loading…";
  const ticket = ++latestRequest;
  try {
    const page = await getJson(`/v1/collections/${encodeURIComponent(collection)}/images?${query}`);
    if (ticket !== latestRequest) return;
    pageCursor = cursor;
    nextCursor = page.next;
    byId("browse-list").replaceChildren(...page.items.map((item) => galleryItem(item, collection)));
    const number = earlierCursors.length + 1;
    byId("page-number").textContent = `Page ${number}`;
    byId("browse-status").textContent = page.items.length
      ? `${collection}: page ${number}, ${page.items.length} image${page.items.length === 1 ? "" : "s"}.`
      : `${collection} has no images${cursor ? " after this point" : ""}.`;
    byId("previous-page").disabled = earlierCursors.length === 0;
    byId("next-page").disabled = !page.next;
    // Keep keyboard focus somewhere useful when the pressed button becomes disabled.
    if (focusAfter?.disabled) byId("browse-heading").focus();
  } catch (error) {
    if (ticket !== latestRequest) return;
    byId("browse-status").textContent = "";
    showError(errors, error);
  }
}

function galleryItem(item, collection) {
  const label = imageLabel(item.metadata, item.id);
  const img = el("img", { alt: label, loading: "lazy", decoding: "async" });
  showImage(img, item.image_url);
  const status = el("p", { className: "item-status", attrs: { role: "status" } });
  const slot = el("div", { className: "alerts" });
  const button = el("button", {
    type: "button",
    className: "danger",
    attrs: { "aria-label": `Delete ${label}` },
    on: { click: () => deleteImage(item, collection, label, button, status, slot) },
  }, "Delete");
  return el("li", { className: "gallery-item" },
    el("div", { className: "result-image" }, img),
    el("p", { className: "result-title" }, label),
    el("p", { className: "result-id" }, item.id),
    button, status, slot);
}

async function deleteImage(item, collection, label, button, status, slot) {
  if (!window.confirm(`Delete "${label}" from ${collection}? It is removed from the index and the media store.`)) return;
  clearErrors(slot);
  button.disabled = true;
  status.textContent = "Deleting…";
  try {
    const job = await (await request(`/v1/collections/${encodeURIComponent(collection)}/images/${item.id}`, { method: "DELETE" })).json();
    const final = await followJob(job.id, { onUpdate: () => {} });
    if (final.status !== "succeeded") throw final.error || { title: `The delete job ended ${final.status}.` };
    status.textContent = "Deleted.";
    await refreshCollections();
    await loadPage(pageCursor, null, collection);
    byId("browse-heading").focus();
  } catch (error) {
    status.textContent = "";
    button.disabled = false;
    showError(slot, error);
  }
}
