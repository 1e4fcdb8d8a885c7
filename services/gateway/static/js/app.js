// Entry point: which view the URL asks for (?view=gallery, or the search view with ?job=<id>), and navigation.
import { forgetKey, showKeyState } from "./auth.js";
import { refreshCollections } from "./collections.js";
import { byId, clearErrors, showError } from "./dom.js";
import { initGallery, openGallery } from "./gallery.js";
import { initSearch, showJob } from "./search.js";

function route() {
  const params = new URLSearchParams(window.location.search);
  const view = params.get("view") === "gallery" ? "gallery" : "search";
  byId("search-view").hidden = view !== "search";
  byId("gallery-view").hidden = view !== "gallery";
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = view === "gallery" ? "Gallery — mmrag" : "Search — mmrag";
  if (view === "gallery") {
    showJob(null);
    openGallery();
  } else {
    showJob(params.get("job"));
  }
}

function navigate(url) {
  window.history.pushState(null, "", url);
  route();
}

function init() {
  showKeyState();
  byId("forget-key").addEventListener("click", () => {
    forgetKey();
    byId("main").focus();
  });
  for (const link of document.querySelectorAll("a[data-view]")) {
    link.addEventListener("click", (event) => {
      if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
      event.preventDefault();
      navigate(link.getAttribute("href"));
    });
  }
  initSearch({
    // The job id goes into the URL, so reloading or sharing the link shows the same job.
    onJobStarted: (jobId) => {
      navigate(`/?job=${encodeURIComponent(jobId)}`);
      byId("job-heading").focus();
    },
  });
  initGallery();
  window.addEventListener("popstate", route);
  // A file dropped beside a drop target must not make the browser navigate to it (file inputs take drops).
  const isFileInput = (node) => node instanceof HTMLInputElement && node.type === "file";
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => {
      if (!isFileInput(event.target)) event.preventDefault();
    });
  }
  route();
  const errors = byId("search-errors");
  refreshCollections()
    .then(() => clearErrors(errors))
    .catch((error) => showError(errors, error));
}

init();
