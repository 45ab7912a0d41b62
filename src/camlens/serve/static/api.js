// The HTTP API, as the page uses it. Every error becomes an ApiError with the server's one-line
// message (and the parameter at fault, if any).

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

export async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// POST /api/explain. `options`: {methods: [...], layers: [...], top, boxes, cmap, alpha}.
// A 503 is retried (after its Retry-After) up to `retries` times.
export async function explain(file, options, { signal, retries = 3 } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const form = new FormData();
    form.append("image", file, file.name || "photo");
    for (const [name, value] of Object.entries(options)) {
      if (value === undefined || value === null) continue;
      for (const item of Array.isArray(value) ? value : [value]) form.append(name, String(item));
    }
    const response = await fetch("/api/explain", { method: "POST", body: form, signal });
    if (response.ok) return response.json();
    const error = await failure(response);
    if (error.status !== 503 || attempt >= retries) throw error;
    await new Promise((resolve) => setTimeout(resolve, 1000 * (error.retryAfter ?? 1)));
  }
}

// The same URL with some query parameters replaced.
export function withQuery(url, params) {
  const full = new URL(url, window.location.href);
  for (const [name, value] of Object.entries(params)) full.searchParams.set(name, String(value));
  return full.pathname + full.search;
}
