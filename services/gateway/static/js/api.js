// The public HTTP API, and nothing else: JSON requests, problem+json errors, long-polled jobs, uploads.
import { apiKey, askForKey } from "./auth.js";

export const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const LONG_POLL_S = 20;

/** An error answer (RFC 9457 problem+json) or a network failure (status 0). */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.type = problem.type || null;
    this.title = problem.title || `HTTP ${status}`;
    this.detail = problem.detail || "";
  }
}

async function problemOf(response) {
  try {
    const body = await response.json();
    if (body && typeof body === "object") return body;
  } catch {
    // Not JSON (a proxy's error page, say): fall through to the status line.
  }
  return { title: `HTTP ${response.status}`, detail: response.statusText };
}

function authHeaders(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

/** fetch() with the API key; a 401 asks for a key once and retries; any other error status throws ApiError. */
export async function request(path, { method = "GET", body, headers, signal } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    let response;
    try {
      response = await fetch(path, { method, body, headers: authHeaders(headers), signal });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, { title: "The server cannot be reached.", detail: String(error.message || error) });
    }
    if (response.ok) return response;
    const problem = await problemOf(response);
    if (response.status === 401 && attempt === 0 && (await askForKey(problem.detail))) continue;
    throw new ApiError(response.status, problem);
  }
}

export async function getJson(path, options) {
  return (await request(path, options)).json();
}

export function jobPath(id) {
  return `/v1/jobs/${encodeURIComponent(id)}`;
}

/** Follow a job to its end by long-polling, calling onUpdate with every state seen. */
export async function followJob(id, { signal, onUpdate }) {
  let job = await getJson(jobPath(id), { signal });
  onUpdate(job);
  while (!TERMINAL.has(job.status)) {
    const query = new URLSearchParams({ wait: String(LONG_POLL_S), since: job.updated_at });
    job = await getJson(`${jobPath(id)}?${query}`, { signal });
    onUpdate(job);
  }
  return job;
}

/** POST a multipart form with upload progress (fetch cannot report it), with the same 401 handling. */
export function upload(path, form, onProgress) {
  const once = () => new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    const key = apiKey();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => resolve(xhr));
    xhr.addEventListener("error", () => reject(new ApiError(0, { title: "The upload failed: the server cannot be reached." })));
    xhr.send(form);
  });
  return (async () => {
    for (let attempt = 0; ; attempt += 1) {
      const xhr = await once();
      const body = xhr.response && typeof xhr.response === "object" ? xhr.response : { title: `HTTP ${xhr.status}` };
      if (xhr.status >= 200 && xhr.status < 300) return body;
      if (xhr.status === 401 && attempt === 0 && (await askForKey(body.detail))) continue;
      throw new ApiError(xhr.status, body);
    }
  })();
}

/** Show an API image in <img>: by URL, or, once an API key is in use, fetched with it as a blob. */
export function showImage(img, url) {
  if (apiKey() === null) {
    img.src = url;
    return;
  }
  request(url)
    .then((response) => response.blob())
    .then((blob) => {
      const objectUrl = URL.createObjectURL(blob);
      img.addEventListener("load", () => URL.revokeObjectURL(objectUrl), { once: true });
      img.src = objectUrl;
    })
    .catch(() => img.classList.add("broken"));
}

/** A link to an API resource (the panorama) that, once an API key is in use, opens it fetched with the key. */
export function resourceLink(link) {
  link.addEventListener("click", (event) => {
    if (apiKey() === null) return;
    event.preventDefault();
    request(link.href)
      .then((response) => response.blob())
      .then((blob) => window.open(URL.createObjectURL(blob), "_blank", "noopener"))
      .catch(() => link.classList.add("broken"));
  });
  return link;
}
