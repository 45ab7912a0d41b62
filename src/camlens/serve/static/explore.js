// The single-photo view: pick or drop a photo, see the top-5 predictions, each class's map
// under any method and layer, alone or side by side, with opacity, colormap, boxes and the peak.

import { explain, withQuery } from "./api.js";

const TOP = 5;
const COMPARE_DEFAULT = ["cam", "gradcam", "gradcampp", "layercam"];
const NAMES = {
  cam: "CAM",
  gradcam: "Grad-CAM",
  gradcampp: "Grad-CAM++",
  xgradcam: "XGrad-CAM",
  hirescam: "HiResCAM",
  gradcam_elementwise: "Grad-CAM elementwise",
  layercam: "LayerCAM",
  scorecam: "Score-CAM",
  sscam: "SS-CAM",
  iscam: "IS-CAM",
  ablationcam: "Ablation-CAM",
  eigencam: "Eigen-CAM",
  eigengradcam: "EigenGrad-CAM",
};
const SVG = "http://www.w3.org/2000/svg";

export const methodName = (name) => NAMES[name] ?? name;

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "className") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function svg(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

function megabytes(bytes) {
  return `${(bytes / 2 ** 20).toFixed(1).replace(/\.0$/, "")} MB`;
}

export function percent(score) {
  return score >= 0.001 ? `${(100 * score).toFixed(1)}%` : "<0.1%";
}

function stemOf(name) {
  return (name || "photo").replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "_") || "photo";
}

export function mountExplore(root, { server, model, methods }) {
  root.replaceChildren(document.getElementById("explore-template").content.cloneNode(true));
  const $ = (id) => root.querySelector(`#${id}`);
  const known = methods.methods.map((m) => m.name);
  const layerInfo = new Map(model.layers.map((layer) => [layer.name, layer]));
  const layerOrder = [model.auto_layer, ...model.layers.map((l) => l.name).reverse()].filter(
    (name, i, all) => all.indexOf(name) === i,
  );

  const state = {
    file: null,
    result: null,
    rank: 0,
    method: known.includes("gradcam") ? "gradcam" : known[0],
    layer: model.auto_layer,
    cmap: server.colormaps.includes("jet") ? "jet" : server.colormaps[0],
    alpha: 0.5,
    boxes: false,
    view: "single",
    compareMethods: new Set(COMPARE_DEFAULT.filter((m) => known.includes(m))),
    compareLayers: new Set([model.auto_layer]),
    request: null,
    reportUrl: null,
    shown: null, // the method and layer on screen in the single view
  };

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
  methodSelect.value = state.method;

  const layerLabel = (name) => {
    const info = layerInfo.get(name);
    const shape = info ? ` · ${info.shape.join("×")}` : "";
    return `${name}${shape}${name === model.auto_layer ? " · auto" : ""}`;
  };
  $("layer").append(...layerOrder.map((n) => element("option", { value: n, text: layerLabel(n) })));
  $("layer").value = state.layer;
  $("compare-layers").append(
    ...layerOrder.map((n) => element("option", { value: n, text: layerLabel(n) })),
  );
  for (const option of $("compare-layers").options) option.selected = state.compareLayers.has(option.value);
  $("cmap").append(...server.colormaps.map((c) => element("option", { value: c, text: c })));
  $("cmap").value = state.cmap;

  for (const m of methods.methods) {
    const id = `compare-${m.name}`;
    const box = element("input", { type: "checkbox", id, value: m.name });
    box.checked = state.compareMethods.has(m.name);
    box.addEventListener("change", () => {
      if (box.checked) state.compareMethods.add(m.name);
      else state.compareMethods.delete(m.name);
      update();
    });
    $("compare-methods").append(element("div", { className: "check" }, box,
      element("label", { for: id, text: methodName(m.name) })));
  }

  methodSelect.addEventListener("change", () => { state.method = methodSelect.value; update(); });
  $("layer").addEventListener("change", () => { state.layer = $("layer").value; update(); });
  $("compare-layers").addEventListener("change", () => {
    state.compareLayers = new Set([...$("compare-layers").selectedOptions].map((o) => o.value));
    update();
  });
  $("cmap").addEventListener("change", () => { state.cmap = $("cmap").value; render(); });
  $("alpha").addEventListener("input", () => setAlpha(Number($("alpha").value) / 100));
  $("boxes").addEventListener("change", () => { state.boxes = $("boxes").checked; render(); });
  $("show-single").addEventListener("click", () => setView("single"));
  $("show-compare").addEventListener("click", () => setView("compare"));
  $("pick").addEventListener("click", () => $("file").click());
  $("file").addEventListener("change", () => {
    if ($("file").files.length) choose($("file").files[0]);
    $("file").value = "";
  });

  function setAlpha(alpha) {
    state.alpha = Math.min(1, Math.max(0, Math.round(alpha * 20) / 20));
    $("alpha").value = String(Math.round(state.alpha * 100));
    $("alpha-value").value = `${Math.round(state.alpha * 100)}%`;
    for (const heat of root.querySelectorAll("img.heat")) heat.style.opacity = String(state.alpha);
    updateDownloads();
  }

  function setView(view) {
    state.view = view;
    $("show-single").setAttribute("aria-pressed", String(view === "single"));
    $("show-compare").setAttribute("aria-pressed", String(view === "compare"));
    $("compare-pick").hidden = view !== "compare";
    update();
  }

  // --- messages --------------------------------------------------------------------------------

  function say(text, kind = "error") {
    const message = $("message");
    message.textContent = text;
    message.className = `message ${kind}`;
    message.hidden = !text;
  }

  function busy(on) {
    $("busy").hidden = !on;
    root.querySelector(".stage-panel").setAttribute("aria-busy", String(on));
  }

  // --- requests --------------------------------------------------------------------------------

  // A new photo: explained first, shown once the server has accepted it (a rejected file leaves
  // the current photo on screen, with the reason).
  function choose(file) {
    if (file.size > server.max_upload_bytes) {
      say(`${file.name}: ${megabytes(file.size)}, over this server's limit of ` +
        `${megabytes(server.max_upload_bytes)}`);
      return;
    }
    say("");
    update(file);
  }

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

  function selectedClass() {
    return state.result ? state.result.predictions[state.rank]?.class_index : undefined;
  }

  function findMap(classIndex, method, layer) {
    return state.result?.explanations.find(
      (e) => e.class_index === classIndex && e.method === method && e.layer === layer,
    );
  }

  // Explains what the screen shows (for `file`, a new photo, or the current one), unless the
  // current result already has it.
  async function update(file = null) {
    const shown = pairs();
    const photo = file ?? state.file;
    if (!photo || !shown.length) return render();
    const c = file ? undefined : selectedClass();
    if (!file && state.result && shown.every(([m, l]) => findMap(c, m, l))) return render();
    const methodsWanted = [...new Set(shown.map(([m]) => m))];
    const layersWanted = [...new Set(shown.map(([, l]) => l))];
    const count = methodsWanted.length * layersWanted.length;
    if (count > server.max_maps) {
      say(`${count} methods × layers are more than this server explains at once ` +
        `(${server.max_maps}): choose fewer`);
      return render();
    }
    const options = { methods: methodsWanted, layers: layersWanted, boxes: "largest",
      cmap: state.cmap };
    if (count * TOP <= server.max_maps || c === undefined) options.top = TOP;
    else options.classes = [c];
    state.request?.abort();
    const controller = new AbortController();
    state.request = controller;
    busy(true);
    try {
      const result = await explain(photo, options, { signal: controller.signal });
      if (state.request !== controller) return;
      if (file) {
        state.file = file;
        state.rank = 0;
        $("file-name").textContent = file.name;
      }
      state.result = result;
      say("");
    } catch (error) {
      if (error.name === "AbortError") return;
      say(error.message);
      if (error.status === 422 && state.shown) {
        // a method or layer the model refuses (CAM without a head, say): back to what is shown
        state.method = methodSelect.value = state.shown.method;
        state.layer = $("layer").value = state.shown.layer;
      }
    } finally {
      if (state.request === controller) {
        state.request = null;
        busy(false);
      }
    }
    render();
  }

  // --- drawing ---------------------------------------------------------------------------------

  function frame(map, { large }) {
    const [width, height] = state.result.image.size;
    const box = element("div", { className: "frame" });
    box.style.setProperty("--ratio", `${width} / ${height}`);
    box.style.setProperty("--aspect", String(width / height));
    const photo = element("img", { className: "photo", src: state.result.image.url,
      alt: state.result.image.name, draggable: "false" });
    // as large as the screen can show it (the browser scales it to the photo, as the overlay is)
    const side = Math.round(Math.min(Math.max(width, height),
      (large ? 1600 : 800) * (window.devicePixelRatio || 1)));
    const heat = element("img", { className: "heat", alt: "", draggable: "false",
      src: withQuery(map.heatmap, { cmap: state.cmap, max_side: side }) });
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
      marks.append(
        svg("circle", { class: "peak-halo", cx: x + 0.5, cy: y + 0.5, r }),
        svg("circle", { class: "peak", cx: x + 0.5, cy: y + 0.5, r }),
        svg("line", { class: "peak", x1: x + 0.5 - 1.8 * r, y1: y + 0.5, x2: x + 0.5 - 0.6 * r,
          y2: y + 0.5 }),
        svg("line", { class: "peak", x1: x + 0.5 + 0.6 * r, y1: y + 0.5, x2: x + 0.5 + 1.8 * r,
          y2: y + 0.5 }),
        svg("line", { class: "peak", x1: x + 0.5, y1: y + 0.5 - 1.8 * r, x2: x + 0.5,
          y2: y + 0.5 - 0.6 * r }),
        svg("line", { class: "peak", x1: x + 0.5, y1: y + 0.5 + 0.6 * r, x2: x + 0.5,
          y2: y + 0.5 + 1.8 * r }),
      );
    }
    box.append(photo, heat, marks);
    return box;
  }

  function caption(map, withClass) {
    const parts = [];
    if (withClass) {
      parts.push(element("strong", { text: map.label.split(",")[0] }),
        element("span", { className: "score", text: percent(map.score) }));
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
    if (!state.result) return;
    state.result.predictions.forEach((p, rank) => {
      const button = element("button", { type: "button", className: "prediction",
        "aria-pressed": String(rank === state.rank), "data-rank": String(rank), title: p.label });
      button.style.setProperty("--p", String(p.score));
      button.append(
        element("span", { className: "rank", text: String(rank + 1) }),
        element("span", { className: "label", text: p.label.split(",")[0] }),
        element("span", { className: "score", text: percent(p.score) }),
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
      list.append(element("li", {}, button));
    });
  }

  function render() {
    const has = Boolean(state.result);
    $("empty").hidden = has || Boolean(state.request);
    $("single").hidden = !has || state.view !== "single";
    $("compare").hidden = !has || state.view !== "compare";
    renderPredictions();
    if (!has) return updateDownloads();
    const c = selectedClass();
    if (state.view === "single") {
      const map = findMap(c, state.method, state.layer);
      const stage = $("stage");
      if (map) {
        stage.replaceChildren(frame(map, { large: true }), caption(map, true));
        state.shown = { method: map.method, layer: map.layer };
      }
    } else {
      const cards = pairs().map(([method, layer]) => {
        const map = findMap(c, method, layer);
        if (!map) return null;
        const card = element("button", { type: "button", className: "card",
          title: `Open ${methodName(method)} at ${layer}` });
        card.append(frame(map, { large: false }), caption(map, false));
        card.addEventListener("click", () => {
          state.method = method;
          state.layer = layer;
          methodSelect.value = method;
          $("layer").value = layer;
          setView("single");
        });
        return card;
      }).filter(Boolean);
      const prediction = state.result.predictions[state.rank];
      const heading = element("h2", { className: "compare-title" },
        element("strong", { text: prediction.label.split(",")[0] }),
        element("span", { className: "score", text: percent(prediction.score) }));
      $("compare").replaceChildren(heading, element("div", { className: "cards" }, ...cards));
      const columns = cards.length <= 1 ? 1 : cards.length <= 4 ? 2 : cards.length <= 9 ? 3 : 4;
      $("compare").style.setProperty("--columns", String(columns));
    }
    updateDownloads();
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
    const map = state.result && findMap(selectedClass(), state.method, state.layer);
    const base = map && `${stemOf(state.result.image.name)}.${map.method}.${map.layer}.${map.class_index}`;
    link($("download-overlay"), map && withQuery(map.overlay,
      { cmap: state.cmap, alpha: state.alpha, boxes: state.boxes ? 1 : 0 }), `${base}.png`);
    link($("download-map"), map && map.map, `${base}.npy`);
    if (state.reportUrl) URL.revokeObjectURL(state.reportUrl);
    state.reportUrl = state.result
      ? URL.createObjectURL(new Blob([JSON.stringify(state.result, null, 2)],
        { type: "application/json" }))
      : null;
    link($("download-report"), state.reportUrl,
      `${stemOf(state.result?.image.name)}.camlens.json`);
  }

  function selectRank(rank, focus = false) {
    if (!state.result) return;
    const last = state.result.predictions.length - 1;
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

  // --- drag and drop, keyboard -----------------------------------------------------------------

  const onDragOver = (event) => {
    if (![...event.dataTransfer.types].includes("Files")) return;
    event.preventDefault();
    document.body.classList.add("dragging");
  };
  const onDragLeave = (event) => {
    if (event.relatedTarget === null) document.body.classList.remove("dragging");
  };
  const onDrop = (event) => {
    document.body.classList.remove("dragging");
    if (!event.dataTransfer.files.length) return;
    event.preventDefault();
    choose(event.dataTransfer.files[0]);
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
    } else if (key === "[" || key === "]") setAlpha(state.alpha + (key === "]" ? 0.1 : -0.1));
    else if (key === "o") $("file").click();
    else return false;
    return true;
  }

  render();
  return {
    keydown,
    dispose() {
      state.request?.abort();
      document.removeEventListener("dragover", onDragOver);
      document.removeEventListener("dragleave", onDragLeave);
      document.removeEventListener("drop", onDrop);
    },
  };
}
