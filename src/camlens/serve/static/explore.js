// The photo view: pick or drop photos (several files or a folder: a strip of thumbnails, each
// explained), see the top-5 predictions (or search any class), each class's map under any method
// and layer, alone or side by side, with opacity, colormap, colorbar, boxes and the peak. A long
// request shows its progress (jobs.js) and can be cancelled; an answer says what it cost.
// The settings live in the address: #/explore?method=layercam&layer=bn2&cmap=viridis&view=compare.

import { explain, withQuery } from "./api.js";
import {
  colorbar, element, megabytes, methodName, plural, releaseAfterPointer, shortLabel, svg,
} from "./dom.js";
import { searchClasses } from "./classes.js";
import { followJob, jobName, jobProgress, stopJob } from "./jobs.js";
import { mountKind } from "./kinds.js";
import { imageFiles } from "./photos.js";
import { mountTargets } from "./targets.js";

const TOP = 5;
const MAX_PHOTOS = 50; // a strip longer than this is hard to use; the rest are reported, not taken
const COMPARE_DEFAULT = ["cam", "gradcam", "gradcampp", "layercam"];
const FAST_CHANNELS = [64, 128, 256]; // offered when the layer has more channels

function stemOf(name) {
  return (name || "photo").replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "_") || "photo";
}

// The address's settings: {name: value} from #/explore?name=value&...
function addressParams() {
  const hash = window.location.hash;
  const at = hash.indexOf("?");
  return new URLSearchParams(at < 0 ? "" : hash.slice(at + 1));
}

export function mountExplore(root, { server, model, methods }) {
  root.replaceChildren(document.getElementById("explore-template").content.cloneNode(true));
  const $ = (id) => root.querySelector(`#${id}`);
  const known = methods.methods.map((m) => m.name);
  const layerInfo = new Map(model.layers.map((layer) => [layer.name, layer]));
  const layerOrder = [model.auto_layer, ...model.layers.map((l) => l.name).reverse()].filter(
    (name, i, all) => all.indexOf(name) === i,
  );
  const defaults = {
    method: known.includes("gradcam") ? "gradcam" : known[0],
    layer: model.auto_layer,
    cmap: server.colormaps.includes("jet") ? "jet" : server.colormaps[0],
    alpha: 0.5,
    boxes: false,
    view: "single",
    compare: COMPARE_DEFAULT.filter((m) => known.includes(m)),
    layers: [model.auto_layer],
    fast: null, // all channels: the exact map
  };
  const perturbation = new Set(methods.methods.filter((m) => m.needs === "scores").map((m) => m.name));
  const maxPhotos = Math.min(MAX_PHOTOS, server.results_kept);

  const state = {
    photos: [], // {file, thumb (object URL), result, status, error}
    photo: null, // the one on screen
    rank: 0, // in entries(): the top-5, then the class searched for
    searched: null, // {class_index, label, scores: photo -> score}
    method: defaults.method,
    layer: defaults.layer,
    cmap: defaults.cmap,
    alpha: defaults.alpha,
    boxes: defaults.boxes,
    view: defaults.view,
    compareMethods: new Set(defaults.compare),
    compareLayers: new Set(defaults.layers),
    fast: defaults.fast,
    request: null,
    job: null, // the request on screen's name on the server (GET, DELETE /api/jobs/JOB)
    started: 0, // when the request on screen was sent (ms)
    ticker: null,
    following: null, // the polling of its job
    background: null, // the request explaining the other photos of the strip
    reportUrl: null,
    shown: null, // the method and layer on screen in the single view
  };
  const result = () => state.photo?.result ?? null;
  // versus, the threshold of a multi-label model, the reference photo: under the predictions
  const targets = mountTargets(root.querySelector(".predictions"), { model, server,
    photo: () => state.photo, result, entries, rank: () => state.rank, selectRank, update, say });
  // a segmentation model's segments, a detector's detections (and their minimum score)
  const kinds = mountKind(root.querySelector(".predictions"), { model, server, result,
    update: () => { state.rank = 0; return update(); } });

  // --- controls ------------------------------------------------------------------------------

  const methodSelect = $("method");
  const groups = new Map();
  for (const m of methods.methods) {
    if (!groups.has(m.needs)) {
      const label = { head: "class weights", gradients: "gradients", activations: "activations",
        scores: "masked passes (slow)" }[m.needs] ?? m.needs;
      groups.set(m.needs, element("optgroup", { label }));
    }
    groups.get(m.needs).append(element("option", { value: m.name, title: m.paper,
      text: methodName(m.name) }));
  }
  methodSelect.append(...groups.values());

  const layerLabel = (name) => {
    const info = layerInfo.get(name);
    const shape = info ? ` · ${info.shape.join("×")}` : "";
    return `${name}${shape}${name === model.auto_layer ? " · auto" : ""}`;
  };
  $("layer").append(...layerOrder.map((n) => element("option", { value: n, text: layerLabel(n) })));
  $("compare-layers").append(
    ...layerOrder.map((n) => element("option", { value: n, text: layerLabel(n) })),
  );
  $("cmap").append(...server.colormaps.map((c) => element("option", { value: c, text: c })));

  for (const m of methods.methods) {
    const id = `compare-${m.name}`;
    const box = element("input", { type: "checkbox", id, value: m.name });
    box.addEventListener("change", () => {
      if (box.checked) state.compareMethods.add(m.name);
      else state.compareMethods.delete(m.name);
      update();
    });
    $("compare-methods").append(element("div", { className: "check" }, box,
      element("label", { for: id, text: methodName(m.name) })));
  }
  for (const select of [methodSelect, $("layer"), $("cmap"), $("compare-layers")]) {
    releaseAfterPointer(select);
  }

  // The controls as the state says.
  function showSettings() {
    methodSelect.value = state.method;
    $("layer").value = state.layer;
    $("cmap").value = state.cmap;
    for (const option of $("compare-layers").options) {
      option.selected = state.compareLayers.has(option.value);
    }
    for (const box of $("compare-methods").querySelectorAll("input")) {
      box.checked = state.compareMethods.has(box.value);
    }
    $("boxes").checked = state.boxes;
    $("show-single").setAttribute("aria-pressed", String(state.view === "single"));
    $("show-compare").setAttribute("aria-pressed", String(state.view === "compare"));
    $("compare-pick").hidden = state.view !== "compare";
    setAlpha(state.alpha);
    showFast();
  }

  // The fast mode of the perturbation methods, offered when one is on screen: only the N
  // channels of largest variance get a masked pass.
  function fastApplies(shown = pairs()) {
    return shown.some(([m]) => perturbation.has(m));
  }

  function showFast() {
    const shown = pairs();
    $("fast-field").hidden = !fastApplies(shown);
    const counts = [...new Set(shown.map(([, l]) => layerInfo.get(l)?.shape[0]).filter(Boolean))];
    const fewest = Math.min(...counts);
    const offered = FAST_CHANNELS.filter((n) => n < fewest);
    if (state.fast !== null && !offered.includes(state.fast)) offered.push(state.fast);
    const select = $("fast");
    const all = counts.length === 1 ? `exact: all ${counts[0]} channels` : "exact: all channels";
    select.replaceChildren(element("option", { value: "", text: all }),
      ...offered.sort((a, b) => a - b).map((n) => element("option", { value: String(n),
        text: `fast: ${n} channels` })));
    select.value = state.fast === null ? "" : String(state.fast);
    $("fast-note").textContent = state.fast === null
      ? "One masked pass per channel: slow, exact."
      : counts.length === 1
        ? `The ${state.fast} of ${counts[0]} channels of largest variance: ` +
          `${Math.round(counts[0] / state.fast)}× fewer masked passes; the map approximates the ` +
          "exact one (close, not equal)."
        : `The ${state.fast} channels of largest variance per layer: fewer masked passes; the maps ` +
          "approximate the exact ones (close, not equal).";
  }
  methodSelect.addEventListener("change", () => { state.method = methodSelect.value; update(); });
  $("layer").addEventListener("change", () => { state.layer = $("layer").value; update(); });
  $("compare-layers").addEventListener("change", () => {
    state.compareLayers = new Set([...$("compare-layers").selectedOptions].map((o) => o.value));
    update();
  });
  $("cmap").addEventListener("change", () => { state.cmap = $("cmap").value; render(); });
  $("fast").addEventListener("change", () => {
    state.fast = $("fast").value ? Number($("fast").value) : null;
    update();
  });
  $("cancel").addEventListener("click", () => cancel());
  $("alpha").addEventListener("input", () => setAlpha(Number($("alpha").value) / 100));
  $("boxes").addEventListener("change", () => { state.boxes = $("boxes").checked; render(); });
  $("show-single").addEventListener("click", () => setView("single"));
  $("show-compare").addEventListener("click", () => setView("compare"));
  $("pick").addEventListener("click", () => $("file").click());
  $("pick-empty").addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", () => {
    if ($("file").files.length) choose([...$("file").files]);
    $("file").value = "";
  });

  function setAlpha(alpha) {
    state.alpha = Math.min(1, Math.max(0, Math.round(alpha * 20) / 20));
    $("alpha").value = String(Math.round(state.alpha * 100));
    $("alpha-value").value = `${Math.round(state.alpha * 100)}%`;
    for (const heat of root.querySelectorAll("img.heat")) heat.style.opacity = String(state.alpha);
    updateDownloads();
    writeAddress();
  }

  function setView(view) {
    state.view = view;
    showSettings();
    update();
  }

  // --- the address ---------------------------------------------------------------------------

  // The settings the address gives; a value this server cannot apply is named, not dropped.
  function readAddress() {
    const params = addressParams();
    const refused = [];
    const take = (name, valid, apply) => {
      if (!params.has(name)) return;
      const value = params.get(name);
      if (valid(value)) apply(value);
      else refused.push(`${name}=${value}`);
    };
    const list = (value) => value.split(",").filter(Boolean);
    take("method", (v) => known.includes(v), (v) => { state.method = v; });
    take("layer", (v) => layerOrder.includes(v), (v) => { state.layer = v; });
    take("cmap", (v) => server.colormaps.includes(v), (v) => { state.cmap = v; });
    take("alpha", (v) => v !== "" && Number(v) >= 0 && Number(v) <= 1, (v) => { state.alpha = Number(v); });
    take("boxes", (v) => v === "0" || v === "1", (v) => { state.boxes = v === "1"; });
    take("view", (v) => v === "single" || v === "compare", (v) => { state.view = v; });
    take("compare", (v) => list(v).every((m) => known.includes(m)),
      (v) => { state.compareMethods = new Set(list(v)); });
    take("layers", (v) => list(v).every((l) => layerOrder.includes(l)),
      (v) => { state.compareLayers = new Set(list(v)); });
    take("fast", (v) => /^[1-9]\d*$/.test(v), (v) => { state.fast = Number(v); });
    targets.read(params, refused);
    kinds.read(params, refused);
    showSettings();
    return refused;
  }

  function writeAddress() {
    const params = new URLSearchParams();
    const set = (name, value, fallback) => {
      if (String(value) !== String(fallback)) params.set(name, String(value));
    };
    set("method", state.method, defaults.method);
    set("layer", state.layer, defaults.layer);
    set("cmap", state.cmap, defaults.cmap);
    set("alpha", state.alpha, defaults.alpha);
    set("boxes", state.boxes ? 1 : 0, 0);
    set("view", state.view, defaults.view);
    set("compare", known.filter((m) => state.compareMethods.has(m)).join(","), defaults.compare.join(","));
    set("layers", layerOrder.filter((l) => state.compareLayers.has(l)).join(","), defaults.layers.join(","));
    set("fast", state.fast ?? "", "");
    targets.write(params);
    kinds.write(params);
    const query = params.toString();
    const hash = `#/explore${query ? `?${query}` : ""}`;
    const current = window.location.hash;
    if (hash !== current && !(query === "" && /^(#\/?)?$/.test(current))) {
      window.history.replaceState(null, "", hash);
    }
  }

  // --- messages --------------------------------------------------------------------------------

  function say(text, kind = "error") {
    const message = $("message");
    message.textContent = text;
    message.className = `message ${kind}`;
    message.hidden = !text;
  }

  // The request on screen: how long it has run, its progress as the server reports it (passes
  // done of those expected, an estimate of the time left), and a Cancel button.
  function busy(on) {
    $("busy").hidden = !on;
    root.querySelector(".stage-panel").setAttribute("aria-busy", String(on));
    clearInterval(state.ticker);
    state.ticker = null;
    state.following?.stop();
    state.following = null;
    $("progress").hidden = true;
    $("progress").removeAttribute("value");
    $("busy-detail").hidden = true;
    if (!on) return;
    state.started = performance.now();
    const slow = fastApplies() ? " (masked passes)" : "";
    const tick = () => {
      const seconds = Math.floor((performance.now() - state.started) / 1000);
      $("busy-text").textContent = `Explaining${slow}… ${seconds ? `${seconds} s` : ""}`.trim();
    };
    tick();
    state.ticker = setInterval(tick, 1000);
    if (state.job) {
      state.following = followJob(state.job, (job) => {
        const { text, fraction } = jobProgress(job);
        $("busy-detail").textContent = text;
        $("busy-detail").hidden = !text;
        $("progress").hidden = fraction === null;
        if (fraction !== null) $("progress").value = fraction;
      });
    }
  }

  // Stops the request on screen, on the server too (its job cancelled, not left to run).
  function stopRequest() {
    state.request?.abort();
    if (state.request && state.following?.seen) stopJob(state.job);
    state.request = null;
    state.job = null;
  }

  // Cancels the request on screen; what was shown stays, with the settings that made it.
  function cancel() {
    if (!state.request) return;
    stopRequest();
    busy(false);
    if (state.shown) {
      state.method = state.shown.method;
      state.layer = state.shown.layer;
      state.view = state.shown.view;
      state.fast = state.shown.fast;
      if (state.shown.compareMethods) {
        state.compareMethods = new Set(state.shown.compareMethods);
        state.compareLayers = new Set(state.shown.compareLayers);
      }
      showSettings();
    }
    say("Cancelled.", "note");
    render();
  }

  // --- photos ----------------------------------------------------------------------------------

  function photoOf(file) {
    return { file, thumb: null, result: null, status: "waiting", error: null };
  }

  // New photos: one is explained first and shown once the server has accepted it (a rejected
  // file leaves the current photo on screen, with the reason); several make a strip, each
  // explained in turn.
  function choose(files) {
    const notes = [];
    if (files.length > maxPhotos) {
      notes.push(`${files.length} photos: the first ${maxPhotos} are taken`);
      files = files.slice(0, maxPhotos);
    }
    const large = files.filter((f) => f.size > server.max_upload_bytes);
    for (const f of large) {
      notes.push(`${f.name}: ${megabytes(f.size)}, over this server's limit of ` +
        `${megabytes(server.max_upload_bytes)}`);
    }
    const taken = files.filter((f) => f.size <= server.max_upload_bytes);
    say(notes.join("; "));
    if (!taken.length) return;
    if (taken.length === 1) {
      update(photoOf(taken[0]));
      return;
    }
    stopBackground();
    for (const p of state.photos) if (p.thumb) URL.revokeObjectURL(p.thumb);
    state.searched = null;
    state.photos = taken.map(photoOf);
    for (const p of state.photos) p.thumb = URL.createObjectURL(p.file);
    state.photo = state.photos[0];
    state.rank = 0;
    $("file-name").textContent = `${state.photos.length} photos`;
    renderStrip();
    update(state.photos[0]).then(() => explainRest());
  }

  function stopBackground() {
    state.background?.abort();
    state.background = null;
  }

  // The photos of the strip not yet explained, one request at a time, with the settings shown.
  async function explainRest() {
    if (state.background) return;
    const controller = new AbortController();
    state.background = controller;
    try {
      for (;;) {
        const next = state.photos.find((p) => p.status === "waiting");
        if (!next || controller.signal.aborted) break;
        next.status = "explaining";
        renderStrip();
        try {
          const { options } = requestFor(next, pairs());
          next.result = await explain(next.file, options, { signal: controller.signal });
          next.fast = options.fast_channels ?? null;
          next.minScore = options.min_score;
          next.status = "done";
        } catch (error) {
          if (error.name === "AbortError") {
            next.status = "waiting";
            break;
          }
          next.status = "failed";
          next.error = error.message;
        }
        renderStrip();
      }
    } finally {
      if (state.background === controller) state.background = null;
    }
  }

  function showPhoto(photo) {
    if (photo === state.photo) return;
    state.photo = photo;
    state.rank = 0;
    $("file-name").textContent = photo.file.name;
    if (photo.status === "failed") say(`${photo.file.name}: ${photo.error}`);
    else say("");
    renderStrip();
    update();
  }

  // The photo small; a file the browser cannot show either is named instead.
  function thumbnail(photo) {
    const image = element("img", { src: photo.thumb, alt: "", draggable: "false" });
    image.addEventListener("error", () => {
      image.replaceWith(element("span", { className: "strip-name", text: photo.file.name }));
    });
    return image;
  }

  function renderStrip() {
    const strip = $("strip");
    strip.hidden = state.photos.length < 2;
    if (strip.hidden) return strip.replaceChildren();
    const words = { waiting: "waiting", explaining: "explaining…", failed: "failed", done: "" };
    strip.replaceChildren(...state.photos.map((p, i) => {
      const button = element("button", { type: "button", className: `strip-photo ${p.status}`,
        title: p.error ? `${p.file.name}: ${p.error}` : p.file.name, "data-index": String(i),
        "aria-current": String(p === state.photo), "aria-label": `${p.file.name}, ${p.status}` },
      thumbnail(p),
      element("span", { className: "strip-state", text: words[p.status] }));
      button.addEventListener("click", () => showPhoto(p));
      return element("li", {}, button);
    }));
  }

  // --- requests --------------------------------------------------------------------------------

  // The (method, layer) pairs on screen.
  function pairs() {
    if (state.view === "single") return [[state.method, state.layer]];
    const out = [];
    for (const layer of layerOrder) {
      if (!state.compareLayers.has(layer)) continue;
      for (const method of known) if (state.compareMethods.has(method)) out.push([method, layer]);
    }
    return out;
  }

  // The classes offered: the top five (and those over the threshold asked for), then the class
  // searched for when it is not one of them, then the similarity to a reference photo.
  function entries() {
    const own = kinds.entries(result()); // segments or detections, for those kinds of model
    const top = own ?? result()?.predictions ?? [];
    const predictions = own ?? [...top, ...targets.more(result(), top)];
    const extra = state.searched
      && !predictions.some((p) => p.class_index === state.searched.class_index);
    const listed = extra ? [...predictions, { ...state.searched, searched: true }] : predictions;
    return own ? listed : [...listed, ...targets.reference(result())];
  }

  // The score of the class searched for, from the latest answer that explained it.
  function searchedScore() {
    const map = result()?.explanations.find((e) => e.class_index === state.searched?.class_index);
    if (map && state.searched) state.searched.scores.set(state.photo, map.score);
    return state.searched?.scores.get(state.photo);
  }

  function selectedClass() {
    return entries()[state.rank]?.class_index;
  }

  function findMap(classIndex, method, layer, answer = result()) {
    return answer?.explanations.find((e) => e.method === method && e.layer === layer
      && (kinds.matches(e, classIndex, answer) ?? targets.matches(e, classIndex, answer)));
  }

  // What to ask the server for `photo` to show `shown` of the class chosen (none: the top five).
  function requestFor(photo, shown, classIndex = undefined) {
    const methodsWanted = [...new Set(shown.map(([m]) => m))];
    const layersWanted = [...new Set(shown.map(([, l]) => l))];
    const count = methodsWanted.length * layersWanted.length;
    const options = { methods: methodsWanted, layers: layersWanted, boxes: "largest",
      cmap: state.cmap };
    const inTop = classIndex === undefined
      || (photo.result?.predictions ?? []).some((p) => p.class_index === classIndex);
    // a new photo: its top classes, as many of the five as the server explains at once
    if (classIndex === undefined) {
      options.top = Math.max(1, Math.min(TOP, Math.floor(server.max_maps / count)));
    } else if (inTop && count * TOP <= server.max_maps) options.top = TOP;
    else options.classes = [classIndex];
    if (fastApplies(shown) && state.fast !== null) options.fast_channels = state.fast;
    if (!kinds.adjust(options, classIndex, photo, options.top)) {
      targets.adjust(options, classIndex, photo);
    }
    return { options, count };
  }

  // Explains what the screen shows (for `fresh`, a new photo, or the one shown), unless its
  // result already has it.
  async function update(fresh = null) {
    showFast();
    const shown = pairs();
    const photo = fresh ?? state.photo;
    if (!photo || !shown.length) return render();
    const c = fresh ? undefined : selectedClass();
    const sameMode = !fastApplies(shown) || (photo.fast ?? null) === state.fast;
    if (!fresh && photo.result && sameMode && !kinds.stale(photo)
      && shown.every(([m, l]) => findMap(c, m, l))) {
      return render();
    }
    if (!fresh && photo.result && !kinds.stale(photo) && kinds.missing(c, photo.result)) {
      return render(); // a detection past those a request explains: asking again gives the same
    }
    const { options, count } = requestFor(photo, shown, c);
    if (count > server.max_maps) {
      say(`${count} methods × layers are more than this server explains at once ` +
        `(${server.max_maps}): choose fewer`);
      return render();
    }
    stopRequest(); // the one before is not wanted any more
    const controller = new AbortController();
    state.request = controller;
    state.job = jobName();
    options.job = state.job;
    busy(true);
    render();
    try {
      const answer = await explain(photo.file, options, { signal: controller.signal });
      if (state.request !== controller) return;
      photo.result = answer;
      photo.fast = options.fast_channels ?? null;
      photo.minScore = options.min_score;
      photo.status = "done";
      photo.error = null;
      if (fresh) {
        if (!state.photos.includes(fresh)) {
          stopBackground();
          for (const p of state.photos) if (p.thumb) URL.revokeObjectURL(p.thumb);
          state.photos = [fresh];
        }
        if (state.photos.length === 1) state.searched = null;
        state.photo = fresh;
        state.rank = 0;
        $("file-name").textContent = fresh.file.name;
        bringResultIntoView();
      }
      say("");
    } catch (error) {
      if (error.name === "AbortError") return;
      if (fresh && state.photos.includes(fresh)) {
        fresh.status = "failed";
        fresh.error = error.message;
        if (!state.photo) state.photo = fresh;
      }
      say(error.message);
      targets.failed(error);
      if (error.status === 422 && state.shown && !fresh) {
        // a method or layer the model refuses (CAM without a head, say): back to what is shown
        state.method = state.shown.method;
        state.layer = state.shown.layer;
        showSettings();
        writeAddress();
      }
    } finally {
      if (state.request === controller) {
        state.request = null;
        state.job = null;
        busy(false);
      }
    }
    renderStrip();
    render();
  }

  // On a narrow screen the photo's map comes first: after a new photo it is on screen.
  function bringResultIntoView() {
    const panel = root.querySelector(".stage-panel");
    const top = panel.getBoundingClientRect().top;
    if (top < 0 || top > window.innerHeight / 2) panel.scrollIntoView({ block: "start" });
  }

  // --- drawing ---------------------------------------------------------------------------------

  function frame(map, { large }) {
    const answer = result();
    const [width, height] = answer.image.size;
    const box = element("div", { className: "frame" });
    box.style.setProperty("--ratio", `${width} / ${height}`);
    box.style.setProperty("--aspect", String(width / height));
    const photo = element("img", { className: "photo", src: answer.image.url,
      alt: answer.image.name, draggable: "false" });
    // as large as the screen can show it (the browser scales it to the photo, as the overlay is)
    const side = Math.round(Math.min(Math.max(width, height),
      (large ? 1600 : 800) * (window.devicePixelRatio || 1)));
    const heat = element("img", { className: "heat", alt: "", draggable: "false",
      src: withQuery(map.heatmap, { cmap: state.cmap, max_side: side }) });
    box.append(photo, heat);
    heat.style.opacity = String(state.alpha);
    const marks = svg("svg", { class: "marks", viewBox: `0 0 ${width} ${height}`,
      preserveAspectRatio: "none", "aria-hidden": "true" });
    if (state.boxes) {
      for (const b of map.boxes ?? []) {
        const [x0, y0, x1, y1] = b.box;
        marks.append(svg("rect", { class: "box", x: x0, y: y0, width: x1 - x0, height: y1 - y0 }));
      }
    }
    if (!map.flat) {
      const [x, y] = map.peak;
      const r = Math.max(width, height) * (large ? 0.022 : 0.035);
      const cx = x + 0.5;
      const cy = y + 0.5;
      marks.append(
        svg("circle", { class: "peak-halo", cx, cy, r }),
        svg("circle", { class: "peak", cx, cy, r }),
        svg("line", { class: "peak", x1: cx - 1.8 * r, y1: cy, x2: cx - 0.6 * r, y2: cy }),
        svg("line", { class: "peak", x1: cx + 0.6 * r, y1: cy, x2: cx + 1.8 * r, y2: cy }),
        svg("line", { class: "peak", x1: cx, y1: cy - 1.8 * r, x2: cx, y2: cy - 0.6 * r }),
        svg("line", { class: "peak", x1: cx, y1: cy + 0.6 * r, x2: cx, y2: cy + 1.8 * r }),
      );
    }
    kinds.marks(map, box, marks, side); // a segment's region, a detection's box
    box.append(marks);
    return box;
  }

  function caption(map, withClass) {
    const parts = [];
    if (withClass) {
      parts.push(...kinds.caption(map) ?? targets.caption(map) ?? [element("strong", { text: shortLabel(map.label) }),
        element("span", { className: "score", text: targets.score(map.score) })]);
    }
    parts.push(element("span", { className: "tag", text: methodName(map.method) }),
      element("span", { className: "tag layer", text: map.layer }));
    parts.push(map.flat
      ? element("span", { className: "flat", text: "flat map: no evidence for this class" })
      : element("span", { className: "peak-text", text: `peak (${map.peak[0]}, ${map.peak[1]})` }));
    return element("figcaption", {}, ...parts);
  }

  function renderPredictions() {
    const list = $("predictions");
    list.replaceChildren();
    $("class-search").hidden = !result() || kinds.kind === "detection";
    if (!result()) return;
    entries().forEach((p, rank) => {
      const score = p.searched ? searchedScore() : p.score;
      const button = element("button", { type: "button",
        className: `prediction${p.searched ? " searched" : ""}`,
        "aria-pressed": String(rank === state.rank), "data-rank": String(rank), title: p.label });
      button.style.setProperty("--p", String(score ?? 0));
      button.append(
        element("span", { className: "rank", text: p.searched || p.similarity ? "" : String(rank + 1) }),
        element("span", { className: "label", text: shortLabel(p.label) }),
        element("span", { className: "score", text: kinds.score(score, p) ?? targets.score(score, p) }),
        element("span", { className: "bar", "aria-hidden": "true" }),
      );
      button.addEventListener("click", () => selectRank(rank));
      button.addEventListener("keydown", (event) => {
        if (event.key === "ArrowDown" || event.key === "ArrowUp") {
          event.preventDefault();
          event.stopPropagation();
          selectRank(rank + (event.key === "ArrowDown" ? 1 : -1), true);
        }
      });
      list.append(element("li", {}, button, ...targets.decorate(list, button, p)));
    });
  }

  // The maps asked for that the answer does not hold, with the server's reason (its `skipped`:
  // method, layer, reason) when it gives one.
  function renderLeftOut(shown, c) {
    const answer = result();
    const reasons = new Map();
    for (const item of answer?.skipped ?? []) {
      reasons.set(`${item.method}\u0000${item.layer}`, item.reason);
    }
    const missing = answer ? shown.filter(([m, l]) => !findMap(c, m, l)) : [];
    const notes = missing.map(([m, l]) => {
      const reason = reasons.get(`${m}\u0000${l}`);
      return `${methodName(m)} at ${l}: ${reason ?? "not in the server's answer"}`;
    });
    $("left-out").hidden = !notes.length || Boolean(state.request);
    $("left-out").textContent = notes.length ? `Not shown: ${notes.join("; ")}` : "";
  }

  // What the answer cost the server (its `stats`): the passes of the batch it was explained in,
  // the model's seconds and the wait in the queue.
  function renderCost(answer) {
    const stats = answer?.stats;
    const count = (n) => (Number.isInteger(n) && n > 0 ? n : 0);
    const parts = [];
    if (count(stats?.forward_passes)) parts.push(plural(stats.forward_passes, "forward pass"));
    if (count(stats?.backward_passes)) parts.push(plural(stats.backward_passes, "backward pass"));
    if (count(stats?.perturbation_passes)) {
      parts.push(plural(stats.perturbation_passes, "masked pass"));
    }
    if (Number.isFinite(stats?.seconds)) parts.push(`${stats.seconds.toFixed(2)} s of model time`);
    if (Number.isFinite(stats?.queued_seconds) && stats.queued_seconds >= 0.005) {
      parts.push(`${stats.queued_seconds.toFixed(2)} s queued`);
    }
    const batch = count(stats?.images) > 1 ? ` (a batch of ${stats.images} photos)` : "";
    $("cost").hidden = !parts.length;
    $("cost").textContent = parts.length ? `This answer: ${parts.join(", ")}${batch}` : "";
  }

  function render() {
    writeAddress();
    const answer = result();
    const has = Boolean(answer);
    $("empty").hidden = has || Boolean(state.request);
    $("single").hidden = !has || state.view !== "single";
    $("compare").hidden = !has || state.view !== "compare";
    $("colorbar").hidden = !has;
    renderPredictions();
    if (!has) {
      $("left-out").hidden = true;
      targets.render();
      kinds.render(answer);
      return updateDownloads();
    }
    $("colorbar").replaceChildren(colorbar(state.cmap));
    const c = selectedClass();
    if (state.view === "single") {
      const map = findMap(c, state.method, state.layer);
      const stage = $("stage");
      const none = map ? null : kinds.none(answer) ?? kinds.missing(c, answer);
      if (none) { // a detector that found nothing: the photo, and why no map
        stage.replaceChildren(element("img", { className: "photo alone", src: answer.image.url,
          alt: answer.image.name }), element("figcaption", {}, element("span",
          { className: "none-note", text: none })));
      }
      if (map) {
        stage.replaceChildren(frame(map, { large: true }), caption(map, true));
        state.shown = { method: map.method, layer: map.layer, view: "single", fast: state.fast };
      }
    } else {
      const shown = pairs();
      if (shown.every(([m, l]) => findMap(c, m, l))) {
        state.shown = { method: state.method, layer: state.layer, view: "compare", fast: state.fast,
          compareMethods: new Set(state.compareMethods), compareLayers: new Set(state.compareLayers) };
      }
      const cards = shown.map(([method, layer]) => {
        const map = findMap(c, method, layer);
        if (!map) return null;
        const card = element("button", { type: "button", className: "card",
          title: `Open ${methodName(method)} at ${layer}` });
        card.append(frame(map, { large: false }), caption(map, false));
        card.addEventListener("click", () => {
          state.method = method;
          state.layer = layer;
          setView("single");
        });
        return card;
      }).filter(Boolean);
      const chosen = entries()[state.rank];
      const score = chosen?.searched ? searchedScore() : chosen?.score;
      const first = cards.length ? findMap(c, ...shown[0]) : null;
      const heading = element("h2", { className: "compare-title" },
        ...(first && (kinds.caption(first) ?? targets.caption(first)))
          ?? [element("strong", { text: shortLabel(chosen?.label ?? "") }),
            element("span", { className: "score",
              text: kinds.score(score, chosen) ?? targets.score(score, chosen) })]);
      $("compare").replaceChildren(heading, element("div", { className: "cards" }, ...cards));
      const columns = cards.length <= 1 ? 1 : cards.length <= 4 ? 2 : cards.length <= 9 ? 3 : 4;
      $("compare").style.setProperty("--columns", String(columns));
    }
    if (kinds.none(answer) || kinds.missing(c, answer)) $("left-out").hidden = true; // said already
    else renderLeftOut(pairs(), c);
    renderCost(answer);
    updateDownloads();
    targets.render();
    kinds.render(answer);
  }

  function link(anchor, href, name) {
    if (href) {
      anchor.href = href;
      anchor.download = name;
      anchor.removeAttribute("aria-disabled");
    } else {
      anchor.removeAttribute("href");
      anchor.setAttribute("aria-disabled", "true");
    }
  }

  function updateDownloads() {
    const answer = result();
    const map = answer && findMap(selectedClass(), state.method, state.layer);
    const tag = map && (kinds.tag(map) ?? targets.tag(map));
    const base = map && `${stemOf(answer.image.name)}.${map.method}.${map.layer}.${tag}`;
    link($("download-overlay"), map && withQuery(map.overlay,
      { cmap: state.cmap, alpha: state.alpha, boxes: state.boxes ? 1 : 0 }), `${base}.png`);
    link($("download-map"), map && map.map, `${base}.npy`);
    if (state.reportUrl) URL.revokeObjectURL(state.reportUrl);
    state.reportUrl = answer
      ? URL.createObjectURL(new Blob([JSON.stringify(answer, null, 2)],
        { type: "application/json" }))
      : null;
    link($("download-report"), state.reportUrl, `${stemOf(answer?.image.name)}.camlens.json`);
    link($("download-zip"), answer?.download, `${stemOf(answer?.image.name)}.camlens.zip`);
  }

  function selectRank(rank, focus = false) {
    if (!result()) return;
    const last = entries().length - 1;
    state.rank = Math.min(last, Math.max(0, rank));
    update().then(() => {
      if (focus) root.querySelector(`.prediction[data-rank="${state.rank}"]`)?.focus();
    });
  }

  function step(select, direction) {
    const options = [...select.options];
    const i = options.findIndex((o) => o.value === select.value);
    const next = options[(i + direction + options.length) % options.length];
    select.value = next.value;
    select.dispatchEvent(new Event("change"));
  }

  // --- another class -------------------------------------------------------------------------

  const query = $("class-query");
  searchClasses(query, $("class-options"), model.classes, (found) => {
    const top = (result()?.predictions ?? []).findIndex((p) => p.class_index === found.index);
    if (top >= 0) {
      selectRank(top);
      return;
    }
    state.searched = { class_index: found.index, label: found.label, scores: new Map() };
    selectRank(entries().length - 1);
  });

  // --- drag and drop, keyboard -----------------------------------------------------------------

  const onDragOver = (event) => {
    if (![...event.dataTransfer.types].includes("Files")) return;
    event.preventDefault();
    document.body.classList.add("dragging");
  };
  const onDragLeave = (event) => {
    if (event.relatedTarget === null) document.body.classList.remove("dragging");
  };
  const onDrop = async (event) => {
    document.body.classList.remove("dragging");
    if (!event.dataTransfer.files.length) return;
    event.preventDefault();
    const { files, skipped } = await imageFiles(event.dataTransfer);
    if (!files.length) {
      say(skipped ? `no image among the ${skipped} files dropped` : "nothing to explain was dropped");
      return;
    }
    choose(files);
  };
  document.addEventListener("dragover", onDragOver);
  document.addEventListener("dragleave", onDragLeave);
  document.addEventListener("drop", onDrop);

  function keydown(event) {
    const target = event.target;
    const typing = target instanceof HTMLInputElement && target.type !== "checkbox"
      && target.type !== "range" || target instanceof HTMLSelectElement;
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return false;
    const key = event.key;
    if (key >= "1" && key <= "9") selectRank(Number(key) - 1);
    else if (key === "ArrowDown" || key === "j") selectRank(state.rank + 1);
    else if (key === "ArrowUp" || key === "k") selectRank(state.rank - 1);
    else if (key === "m" || key === "M") step(methodSelect, key === "m" ? 1 : -1);
    else if (key === "l" || key === "L") step($("layer"), key === "l" ? 1 : -1);
    else if (key === "c") setView(state.view === "single" ? "compare" : "single");
    else if (key === "b") {
      $("boxes").checked = !$("boxes").checked;
      $("boxes").dispatchEvent(new Event("change"));
    } else if (key === "[" || key === "]") {
      setAlpha(state.alpha + (key === "]" ? 0.1 : -0.1));
    } else if (key === "o") $("file").click();
    else if (key === "/" && result()) query.focus();
    else if (key === "v" && result()) $("versus-query").focus();
    else if (key === "Escape" && state.request) cancel();
    else return false;
    return true;
  }

  const refused = readAddress();
  if (refused.length) say(`Not applied from the address (unknown here): ${refused.join(", ")}`);
  render();
  return {
    keydown,
    navigate() {
      const wrong = readAddress();
      if (wrong.length) say(`Not applied from the address (unknown here): ${wrong.join(", ")}`);
      update();
    },
    dispose() {
      stopRequest();
      clearInterval(state.ticker);
      state.following?.stop();
      stopBackground();
      targets.dispose();
      for (const p of state.photos) if (p.thumb) URL.revokeObjectURL(p.thumb);
      document.removeEventListener("dragover", onDragOver);
      document.removeEventListener("dragleave", onDragLeave);
      document.removeEventListener("drop", onDrop);
    },
  };
}
