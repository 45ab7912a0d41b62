// The HTTP API, as the page uses it: every URL the page asks for is made here, relative to where
// the server is (the folder above static/), so a server behind a reverse proxy at /camlens/ works.
// Every error becomes an ApiError with the server's one-line message (and the parameter at fault).

const ROOT = new URL("../", import.meta.url);

// A path of the server (`api/model`), or a URL the server gave (which holds its root already).
export const url = (path) => new URL(path, ROOT).href;
const runPath = (run) => `api/runs/${encodeURIComponent(run)}`;

export class ApiError extends Error {
  constructor(status, detail, parameter = null, retryAfter = null) {
    super(detail);
    this.status = status;
    this.parameter = parameter;
    this.retryAfter = retryAfter;
  }
}

async function failure(response) {
  let detail = `${response.status} ${response.statusText}`;
  let parameter = null;
  try {
    const body = await response.json();
    if (body && typeof body.detail === "string") detail = body.detail;
    parameter = body.parameter ?? null;
  } catch {
    // not JSON: keep the status line
  }
  const retry = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
  return new ApiError(response.status, detail, parameter, Number.isFinite(retry) ? retry : null);
}

export async function getJSON(path, params = null) {
  const query = params && [...new URLSearchParams(params)].length ? `?${new URLSearchParams(params)}` : "";
  const response = await fetch(url(path) + query, { headers: { Accept: "application/json" } });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export const getServer = () => getJSON("api/server");
export const getModel = () => getJSON("api/model");
export const getMethods = () => getJSON("api/methods");
export const getRuns = () => getJSON("api/runs");
export const getRunSummary = (run) => getJSON(`${runPath(run)}/summary`);
export const getRunImages = (run, params) => getJSON(`${runPath(run)}/images`, params);
export const getRunImage = (run, id, params) => getJSON(`${runPath(run)}/images/${id}`, params);
export const docsUrl = () => url("docs");
export const colormapUrl = (cmap) => url(`static/cmap-${encodeURIComponent(cmap)}.png`);

// POST /api/explain. `options`: {methods: [...], layers: [...], top, classes, boxes, cmap, alpha,
// versus, above, like (a File)...}.
// A 503 is retried (after its Retry-After) up to `retries` times.
export async function explain(file, options, { signal, retries = 3 } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const form = new FormData();
    form.append("image", file, file.name || "photo");
    for (const [name, value] of Object.entries(options)) {
      if (value === undefined || value === null) continue;
      for (const item of Array.isArray(value) ? value : [value]) {
        if (item instanceof Blob) form.append(name, item, item.name || name); // `like`: a photo
        else form.append(name, String(item));
      }
    }
    const response = await fetch(url("api/explain"), { method: "POST", body: form, signal });
    if (response.ok) return response.json();
    const error = await failure(response);
    if (error.status !== 503 || attempt >= retries) throw error;
    await new Promise((resolve) => setTimeout(resolve, 1000 * (error.retryAfter ?? 1)));
  }
}

// A named request's progress (GET /api/jobs/JOB) and its cancellation (DELETE).
const jobPath = (job) => `api/jobs/${encodeURIComponent(job)}`;
export const getJob = (job) => getJSON(jobPath(job));

export async function cancelJob(job) {
  const response = await fetch(url(jobPath(job)), { method: "DELETE" });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// The same URL with some query parameters replaced.
export function withQuery(address, params) {
  const full = new URL(address, ROOT);
  for (const [name, value] of Object.entries(params)) full.searchParams.set(name, String(value));
  return full.pathname + full.search;
}
