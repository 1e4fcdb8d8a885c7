// One search job on screen: its stage while it runs, then its timings, the rerank outcome and the results.
import { resourceLink, showImage } from "./api.js";
import { append, byId, clearErrors, el, formatMs, imageLabel, metadataText, showError } from "./dom.js";

const STAGES = [
  ["queued", "Queued"],
  ["embedding", "Embedding"],
  ["searching", "Searching"],
  ["reranking", "Reranking"],
  ["done", "Done"],
];
const RUNNING_TEXT = {
  queued: "Queued: waiting for the embedder…",
  embedding: "Embedding the query…",
  searching: "Searching the collection…",
  reranking: "Reranking with the vision model…",
  done: "Finishing…",
};
const TIMINGS = [
  ["queue", "Queue"],
  ["embed", "Embed"],
  ["search", "Search"],
  ["rerank", "Rerank"],
  ["vlm", "Vision model"],
  ["total", "Total"],
];

let moreLikeThis = () => {};
/** A canceled or failed job reads stage "done": where it stopped is the last stage seen while it ran. */
let lastRunningStage = null;

/** `handler(imageId, collection)` runs when a result's "More like this" is pressed. */
export function onMoreLikeThis(handler) {
  moreLikeThis = handler;
}

/** Show the panel for a job, emptied of whatever the previous job left. */
export function startJobView(jobId) {
  byId("job-panel").hidden = false;
  byId("job-id").textContent = jobId;
  byId("job-status").textContent = "Loading…";
  byId("cancel-job").hidden = true;
  clearErrors(byId("job-errors"));
  for (const id of ["timings", "job-warning", "rerank-info"]) {
    byId(id).hidden = true;
    byId(id).replaceChildren();
  }
  byId("results").replaceChildren();
  lastRunningStage = null;
  renderStages(null);
}

export function hideJobView() {
  byId("job-panel").hidden = true;
}

/** An error about the job itself (it expired, the server went away): shown in the job panel. */
export function showJobError(error) {
  byId("job-status").textContent = "";
  byId("cancel-job").hidden = true;
  showError(byId("job-errors"), error);
}

function renderStages(job) {
  const stopped = job && (job.status === "failed" || job.status === "canceled");
  const stage = stopped ? lastRunningStage : job?.stage;
  const reached = STAGES.findIndex(([name]) => name === stage);
  const items = STAGES.map(([, label], index) => {
    const item = el("li", { className: "stage" }, label);
    if (index < reached || (index === reached && job.status === "succeeded")) item.classList.add("passed");
    if (index === reached && !stopped && job.status !== "succeeded") item.setAttribute("aria-current", "step");
    if (index === reached && stopped) item.classList.add("stopped");
    return item;
  });
  document.querySelector("#job-panel .stages").replaceChildren(...items);
}

export function renderJob(job) {
  const running = job.status === "queued" || job.status === "running";
  if (running) lastRunningStage = job.stage;
  renderStages(job);
  byId("cancel-job").hidden = !running;
  const status = byId("job-status");
  if (running) {
    status.textContent = RUNNING_TEXT[job.stage] ?? `${job.stage}…`;
    return;
  }
  renderTimings(job.timings_ms);
  if (job.status === "canceled") {
    status.textContent = "Canceled.";
  } else if (job.status === "failed") {
    status.textContent = "Failed.";
    showError(byId("job-errors"), job.error || { title: "The search failed." });
  } else {
    const count = job.result.candidates.length;
    status.textContent = `Done: ${count} result${count === 1 ? "" : "s"} in ${formatMs(job.timings_ms.total)}.`;
    renderResult(job.result);
  }
}

function renderTimings(timings) {
  const list = byId("timings");
  const shown = TIMINGS.filter(([key]) => timings?.[key] !== null && timings?.[key] !== undefined);
  list.replaceChildren(...shown.map(([key, label]) => el("div", {}, el("dt", {}, label), el("dd", {}, formatMs(timings[key])))));
  list.hidden = shown.length === 0;
}

function renderResult(result) {
  const warning = byId("job-warning");
  warning.textContent = result.warning || "";
  warning.hidden = !result.warning;
  const best = result.rerank.status === "applied" ? result.candidates.find((c) => c.id === result.rerank.best_id) : null;
  renderRerank(result.rerank, best);
  byId("results").replaceChildren(
    ...result.candidates.map((candidate) => resultItem(candidate, result.collection, candidate === best)),
  );
}

function renderRerank(rerank, best) {
  const box = byId("rerank-info");
  box.replaceChildren();
  const model = rerank.model ? ` (${rerank.model}${rerank.cached ? ", cached answer" : ""})` : "";
  if (rerank.status === "applied") {
    append(box,
      el("h3", {}, "Best pick"),
      el("p", { className: "best-pick" }, best ? `#${best.rank} ${imageLabel(best.metadata, best.id)}` : "none named"),
      rerank.explanation ? el("p", { className: "explanation" }, rerank.explanation) : null,
      el("p", { className: "hint" }, `Ranked by the vision model${model}.`));
  } else if (rerank.status === "skipped") {
    append(box, el("p", { className: "notice" }, `Reranking skipped: ${rerank.reason || "no reason given"}. The results are in vector order.`));
  } else if (rerank.status === "failed") {
    append(box, el("p", { className: "notice warning" }, `Reranking failed${model}: ${rerank.reason || "no reason given"}. The results are in vector order.`));
  }
  if (rerank.panorama_url) {
    append(box, el("p", {}, resourceLink(el("a", {
      href: rerank.panorama_url, target: "_blank", rel: "noopener",
    }, "Open the panorama the vision model saw"))));
  }
  box.hidden = box.childElementCount === 0;
}

function movementText(candidate) {
  const moved = candidate.vector_rank - candidate.rank;
  if (moved > 0) return `↑ moved up ${moved}`;
  if (moved < 0) return `↓ moved down ${-moved}`;
  return "not moved";
}

function fact(label, value, className) {
  return el("div", { className }, el("dt", {}, label), el("dd", {}, value));
}

function resultItem(candidate, collection, isBest) {
  const label = imageLabel(candidate.metadata, candidate.id);
  const titleId = `result-${candidate.rank}-title`;
  const img = el("img", { alt: label, loading: "lazy", decoding: "async" });
  showImage(img, candidate.image_url);
  const metadata = Object.entries(candidate.metadata || {});
  return el("li", { className: isBest ? "result best" : "result" },
    el("div", { className: "result-image" }, img),
    el("div", { className: "result-body" },
      el("p", { className: "result-rank" },
        el("span", { className: "rank" }, `#${candidate.rank}`),
        isBest ? el("span", { className: "badge" }, "Best pick") : null),
      el("p", { className: "result-title", id: titleId }, label),
      el("dl", { className: "facts" },
        fact("Vector rank", `${candidate.vector_rank} (${movementText(candidate)})`),
        fact("Score", candidate.score.toFixed(3))),
      metadata.length
        ? el("dl", { className: "metadata" }, ...metadata.map(([key, value]) => fact(key, metadataText(value))))
        : null,
      el("p", { className: "result-id" }, candidate.id),
      el("button", {
        type: "button",
        attrs: { "aria-describedby": titleId },
        on: { click: () => moreLikeThis(candidate.id, collection) },
      }, "More like this")));
}
