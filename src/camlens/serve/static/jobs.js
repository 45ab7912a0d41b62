// A request's progress and its cancellation. The page names each request it sends (POST
// /api/explain's `job` field), polls GET /api/jobs/JOB while it runs (perturbation passes done of
// those known, phases, an estimate of the seconds left), and stops it with DELETE /api/jobs/JOB.

import { cancelJob, getJob } from "./api.js";
import { plural } from "./dom.js";

const FIRST_POLL_MS = 800; // a cheap request is answered before: it is never polled
const POLL_MS = 500;

// A name no other client can guess: 16 random bytes in base64url (the server takes 8 to 64
// letters, digits, - and _). crypto.getRandomValues works on plain http too.
export function jobName() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_")
    .replace(/=+$/, "");
}

// Polls job `name` until `stop()`, handing each answer to `onProgress`. The server knows the
// job once the request's upload has arrived: an error before that (or while the server is
// busy) is waited out; polling ends when the job does. `seen`: whether the server knew it.
export function followJob(name, onProgress) {
  let stopped = false;
  let timer = null;
  let seen = false;
  const poll = async () => {
    if (stopped) return;
    try {
      const job = await getJob(name);
      seen = true;
      if (stopped) return;
      onProgress(job);
      if (job.state !== "queued" && job.state !== "running") return;
    } catch {
      // not known yet: try again
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  };
  timer = setTimeout(poll, FIRST_POLL_MS);
  return {
    get seen() {
      return seen;
    },
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

// Asks the server to stop job `name` (its POST then answers 409); nothing waits for the answer.
// (A request aborted before the server knew its job needs none: the server stops a request
// whose client went away.)
export function stopJob(name) {
  cancelJob(name).catch(() => {});
}

// What a job's answer says, as the page writes it: {text, fraction} (fraction of the passes
// expected in all, or null before any pass ran). A job with perturbation phases expects as many
// passes in each phase still to start as in those started.
export function jobProgress(job) {
  if (job.state === "queued") {
    return { text: `waiting for the server, ${Math.floor(job.queued_seconds)} s`, fraction: null };
  }
  if (!job.phases || !job.passes_total) return { text: "", fraction: null };
  const started = Math.min(job.phases, job.phases_done + 1);
  const expected = Math.max(job.passes_total, Math.round(job.passes_total / started * job.phases));
  const parts = [`${job.passes_done.toLocaleString("en")} of ${plural(expected, "masked pass")}`];
  if (job.phases > 1) parts.push(`phase ${started} of ${job.phases}`);
  if (Number.isFinite(job.estimate_seconds)) parts.push(`about ${duration(job.estimate_seconds)} left`);
  return { text: parts.join(" · "), fraction: job.passes_done / expected };
}

// Seconds as an estimate is read: to the second under a minute, then to 10 s, then to the minute.
function duration(seconds) {
  const whole = Math.max(1, Math.round(seconds));
  if (whole < 60) return `${whole} s`;
  if (whole < 120) {
    const rest = Math.round((whole - 60) / 10) * 10;
    return rest === 0 ? "1 min" : rest === 60 ? "2 min" : `1 min ${rest} s`;
  }
  return `${Math.round(whole / 60)} min`;
}
