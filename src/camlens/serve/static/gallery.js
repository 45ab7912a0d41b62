// The run gallery (camlens serve --runs): the runs found, a grid of a run's images (the overlay of
// the map shown, loaded as it scrolls into view) filtered by class and sorted, more pages as the
// page scrolls down; an image opened shows all its maps, ← → step through the list, Esc goes
// back to it. What is shown lives in the address: #/gallery/RUN?class=285&sort=spread&image=12.
// With true classes (folders named by class), "Mistakes only" (status=wrong) keeps the images
// whose top-1 is wrong; such an image opened shows, beside each top-1 map, the map of the top-1
// versus the true class when the run has it (camlens explain DIR --versus true).
// A segmentation model's image opened shows its predicted segmentation first, then a map per
// class; a detector's shows its detections, each map with its box, and its list sorts by
// "energy in box" (the share of a detection's map inside its own box), lowest first.

import { getRunImage, getRunImages, getRunSummary, getRuns } from "./api.js";
import { element, methodName, percent, plural, releaseAfterPointer, shortLabel } from "./dom.js";

const PAGE = 60;
const SORTS = ["score", "spread", "off_center", "energy_in_box", "name"];
const SORT_NAMES = { score: "score", spread: "spread", off_center: "off-center",
  energy_in_box: "energy in box", name: "name" };
const ASCENDING = ["name", "energy_in_box"]; // what each sort shows first by default

function parseHash() {
  const hash = window.location.hash.replace(/^#\/?/, "");
  const at = hash.indexOf("?");
  const path = at < 0 ? hash : hash.slice(0, at);
  const params = new URLSearchParams(at < 0 ? "" : hash.slice(at + 1));
  const segment = path.split("/")[1];
  let run = null;
  try {
    run = segment ? decodeURIComponent(segment) : null;
  } catch {
    run = null;
  }
  const image = Number.parseInt(params.get("image") ?? "", 10);
  return {
    run,
    class: params.get("class") ?? "",
    status: ["failed", "wrong"].includes(params.get("status")) ? params.get("status") : "all",
    sort: SORTS.includes(params.get("sort")) ? params.get("sort") : "score",
    order: ["asc", "desc"].includes(params.get("order")) ? params.get("order") : null,
    image: Number.isInteger(image) && image >= 0 ? image : null,
  };
}

function hashOf(view) {
  const params = new URLSearchParams();
  if (view.class) params.set("class", view.class);
  if (view.status !== "all") params.set("status", view.status);
  if (view.sort !== "score") params.set("sort", view.sort);
  if (view.order) params.set("order", view.order);
  if (view.image !== null) params.set("image", String(view.image));
  const query = params.toString();
  return `#/gallery/${encodeURIComponent(view.run ?? "")}${query ? `?${query}` : ""}`;
}

const share = (fraction) => `${(100 * fraction).toFixed(1)}%`; // of the images: 0 is 0%
const defaultOrder = (sort) => (ASCENDING.includes(sort) ? "asc" : "desc");
const baseName = (path) => path.split(/[\\/]/).pop() || path;
const signed = (value) => `${value >= 0 ? "+" : "−"}${Math.abs(value).toFixed(2)}`;

// A mistaken image's maps in the order shown: each top-1 map followed by the map of the top-1
// versus the true class at the same method and layer (when the run has it), then the others.
// Returns the maps, each with its role ("top1", "versus" or null), and whether any pair was made.
function pairedMaps(item) {
  const top = item.prediction?.class_index;
  const truth = item.truth?.class_index;
  const roles = item.maps.map(() => null);
  if (top === undefined || truth === undefined || top === truth) {
    return { maps: item.maps.map((m, i) => ({ map: m, index: i, role: null })), paired: false };
  }
  const versus = (m) => m.target?.kind === "contrast" && m.target.classes?.length === 2
    && m.target.classes[0] === top && m.target.classes[1] === truth;
  const order = [];
  item.maps.forEach((m, i) => {
    if (m.target || m.class_index !== top) return;
    const j = item.maps.findIndex((n, k) => roles[k] === null && versus(n)
      && n.method === m.method && n.layer === m.layer);
    if (j < 0) return;
    roles[i] = "top1";
    roles[j] = "versus";
    order.push(i, j);
  });
  item.maps.forEach((m, i) => {
    if (roles[i] === null) order.push(i);
  });
  return { maps: order.map((i) => ({ map: item.maps[i], index: i, role: roles[i] })), paired: order.length > 0 && roles.includes("versus") };
}

// A detector's map: the detection it explains (its class name, score and box), from the image's
// detections; null for any other map.
function detectionOf(item, map) {
  if (map?.target?.kind !== "detection") return null;
  const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);
  return item.detections?.find((d) => same(d.box, map.target.box))
    ?? { box: map.target.box, class_index: map.target.label, label: map.label, score: map.target.score };
}

const boxText = (box) => box.map((v) => Math.round(v)).join(", ");
const inBoxText = (value) => `${Math.round(100 * value)}% in its box`;

function valueText(sort, map) {
  if (!map || sort === "name" || sort === "score") return "";
  if (map.flat) return "flat map";
  const value = map[sort];
  if (value === null || value === undefined) return "";
  if (sort === "energy_in_box") return inBoxText(value);
  return sort === "spread" ? `spread ${Math.round(100 * value)}%` : `off-center ${value.toFixed(2)}`;
}

export function mountGallery(root, { model }) {
  root.replaceChildren(document.getElementById("gallery-template").content.cloneNode(true));
  const $ = (id) => root.querySelector(`#${id}`);
  const state = {
    runs: [],
    run: null, // the run shown
    summary: null,
    key: null, // what the list holds: run, class, status, sort and order
    listing: null, // the list being started
    view: null, // the address's state
    items: [],
    total: 0,
    loading: null,
    generation: 0, // bumped when the list starts again: older answers are dropped
    open: null, // the image opened
    openIndex: -1, // its place in the list, -1 if it is not in it
    pushed: false, // the address of the opened image was pushed by this page (Esc goes back)
    scroll: 0,
  };
  let disposed = false;

  // --- messages ------------------------------------------------------------------------------

  function say(text) {
    const message = $("gallery-message");
    message.textContent = text;
    message.className = "message error";
    message.hidden = !text;
  }

  // --- the address -----------------------------------------------------------------------------

  function go(changes, { push = false } = {}) {
    const hash = hashOf({ ...state.view, ...changes });
    if (hash === window.location.hash) return navigate();
    if (push) {
      state.pushed = true; // Esc goes back in the history, to the address before
      window.location.hash = hash; // hashchange: the app calls navigate()
    } else {
      window.history.replaceState(null, "", hash);
      navigate();
    }
  }

  // Shows what the address says: the run, the list (started again when a filter changed) and
  // the image opened, if any.
  async function navigate() {
    if (disposed || !state.runs.length) return;
    const view = parseHash();
    const usable = state.runs.filter((r) => !r.problem);
    let notice = "";
    if (!usable.some((r) => r.name === view.run)) {
      if (view.run !== null) notice = `There is no run named “${view.run}” to show here.`;
      if (!usable.length) return say(notice || "No run here can be read.");
      view.run = usable[0].name;
      view.image = null;
      window.history.replaceState(null, "", hashOf(view));
    }
    state.view = view;
    const key = JSON.stringify([view.run, view.class, view.status, view.sort, view.order]);
    if (key !== state.key) {
      state.key = key;
      state.listing = startList(view);
    }
    await state.listing; // the list's first page, for the image's place in it
    if (disposed || state.view !== view) return; // a newer address took over meanwhile
    if (notice) say(notice);
    if (view.image === null) closeImage();
    else await openImage(view.image);
  }

  // --- the runs --------------------------------------------------------------------------------

  function renderRuns() {
    const list = $("runs");
    list.replaceChildren(...state.runs.map((run) => {
      const facts = [plural(run.images, "image")];
      if (run.errors) facts.push(`${run.errors.toLocaleString("en")} failed`);
      const button = element("button", { type: "button", className: "run",
        "aria-pressed": String(run.name === state.run), "data-run": run.name },
      element("strong", { className: "run-name", text: run.name }),
      element("span", { className: "run-facts", text: run.problem ? "cannot be read" : facts.join(" · ") }),
      element("span", { className: "run-model",
        text: run.problem ?? [run.model, run.methods.map(methodName).join(", "), run.format,
          run.kind === "classifier" ? null : run.kind].filter(Boolean).join(" · ") }));
      if (run.problem) button.disabled = true;
      button.addEventListener("click", () => {
        if (run.name !== state.run) go({ run: run.name, class: "", status: "all", image: null });
      });
      return element("li", {}, button);
    }));
  }

  async function loadSummary(run) {
    const summary = await getRunSummary(run);
    if (state.run !== run) return;
    state.summary = summary;
    const select = $("class-filter");
    const classes = [...summary.classes].sort((a, b) => a.label.localeCompare(b.label));
    select.replaceChildren(
      element("option", { value: "", text: `All images (${summary.images.toLocaleString("en")})` }),
      ...classes.map((c) => element("option", { value: String(c.class_index),
        text: `${c.label} (${c.images.toLocaleString("en")})` })),
    );
    if (summary.errors) {
      select.append(element("option", { value: "failed",
        text: `Failed images (${summary.errors.toLocaleString("en")})` }));
    }
    $("class-label").textContent = summary.by === "truth" ? "Class (true, from folder names)"
      : "Class (top-1 prediction)";
    // the mistakes: the images with a true class whose top-1 is another
    const mistakes = summary.top1 === null ? 0 : Math.round(summary.labelled * (1 - summary.top1));
    $("mistakes-field").hidden = !summary.labelled;
    $("mistakes-label").textContent = `Mistakes only (${mistakes.toLocaleString("en")})`;
    const facts = [
      ["Images", summary.images.toLocaleString("en")],
      ["Explained", summary.explained.toLocaleString("en")],
    ];
    if (summary.errors) facts.push(["Failed", summary.errors.toLocaleString("en")]);
    if (summary.flat) facts.push(["Flat first map", summary.flat.toLocaleString("en")]);
    if (summary.detections?.length || summary.undetected) {
      facts.push(["No detection", plural(summary.undetected, "image")]);
    }
    if (summary.top1 !== null) {
      facts.push(["Top-1 right", `${percent(summary.top1)} of ${summary.labelled.toLocaleString("en")}`]);
      facts.push(["Top-5 right", percent(summary.top5)]);
    }
    const info = state.runs.find((r) => r.name === run);
    if (info?.model) facts.push(["Model", info.model]);
    if (info?.layers.length) facts.push(["Layers", info.layers.join(", ")]);
    $("facts").replaceChildren(...facts.flatMap(([name, value]) => [
      element("dt", { text: name }), element("dd", { text: value }),
    ]));
    renderClassTable(summary, classes);
  }

  // The summary's per-class table: a column per number the run has; a class opens its images.
  function renderClassTable(summary, classes) {
    if (summary.detections?.length) {
      return renderLines(`Per class detected: ${plural(summary.detections.length, "class")}`, summary.detections, [
        ["images", "Images", (v) => v.toLocaleString("en")],
        ["detections", "Detections", (v) => v.toLocaleString("en")],
        ["score", "Mean score", percent],
        ["energy_in_box", "Mean in box", (v) => `${Math.round(100 * v)}%`],
      ]);
    }
    if (summary.segments?.length) {
      return renderLines(`Per class present: ${plural(summary.segments.length, "class")}`, summary.segments, [
        ["images", "Images", (v) => v.toLocaleString("en")],
        ["share", "Mean share of the pixels", percent],
      ]);
    }
    const table = $("class-table");
    table.hidden = !classes.length;
    const has = (key) => classes.some((c) => c[key] !== null && c[key] !== undefined);
    const columns = [
      ["images", "Images", (v) => v.toLocaleString("en")],
      ["score", "Mean score", percent],
      ["top1", "Top-1 right", share],
      ["top5", "Top-5 right", share],
      ["spread", "Spread", (v) => `${Math.round(100 * v)}%`],
      ["off_center", "Off-center", (v) => v.toFixed(2)],
    ].filter(([key]) => has(key));
    table.querySelector("summary").textContent =
      `Per class: ${plural(classes.length, "class")}` +
      (summary.by === "truth" ? " (true, from folder names)" : " (top-1 prediction)");
    $("class-table-head").replaceChildren(element("tr", {}, element("th", { scope: "col", text: "Class" }),
      ...columns.map(([, name]) => element("th", { scope: "col", text: name }))));
    $("class-table-body").replaceChildren(...classes.map((c) => {
      const open = element("button", { type: "button", text: c.label, "data-class": String(c.class_index),
        title: `Show the images of ${c.label}` });
      open.addEventListener("click", () => go({ class: String(c.class_index), status: "all", image: null }));
      return element("tr", {}, element("th", { scope: "row" }, open),
        ...columns.map(([key, , format]) => element("td", {
          text: c[key] === null || c[key] === undefined ? "–" : format(c[key]) })));
    }));
  }

  // The summary's table of a segmentation model's classes present (images, mean share of the
  // pixels) or a detector's classes detected (images, detections, mean score, energy in box).
  function renderLines(title, lines, columns) {
    const table = $("class-table");
    table.hidden = false;
    table.querySelector("summary").textContent = title;
    $("class-table-head").replaceChildren(element("tr", {}, element("th", { scope: "col", text: "Class" }),
      ...columns.map(([, name]) => element("th", { scope: "col", text: name }))));
    $("class-table-body").replaceChildren(...lines.map((c) => element("tr", {},
      element("th", { scope: "row", text: c.label }),
      ...columns.map(([key, , format]) => element("td", {
        text: c[key] === null || c[key] === undefined ? "–" : format(c[key]) })))));
  }

  // --- the list --------------------------------------------------------------------------------

  async function startList(view) {
    const generation = ++state.generation;
    say("");
    state.items = [];
    state.total = 0;
    state.loading = null;
    $("thumbs").replaceChildren();
    $("no-images").hidden = false;
    $("no-images").textContent = "Reading the run…"; // a large index takes a few seconds once
    $("more").hidden = true;
    $("gallery-count").textContent = "";
    const runChanged = view.run !== state.run;
    state.run = view.run;
    renderRuns();
    renderControls(view);
    if (runChanged) {
      state.summary = null;
      $("class-filter").replaceChildren();
      try {
        await loadSummary(view.run);
      } catch (error) {
        if (generation === state.generation) say(error.message);
        return;
      }
      if (generation !== state.generation) return; // the address changed meanwhile
    }
    showClass(view, /^\d+$/.test(view.class) ? Number(view.class) : null);
    await loadMore();
  }

  // The class list and the title say the same class: the one the server read the address's
  // class as (an index or a name, `class_index` of its answer), else the address's own words.
  function showClass(view, classIndex) {
    const select = $("class-filter");
    select.querySelector("option.extra")?.remove();
    $("mistakes-only").checked = view.status === "wrong";
    if (view.status === "failed") {
      select.value = "failed";
    } else if (classIndex === null) {
      select.value = "";
    } else {
      const value = String(classIndex);
      if (![...select.options].some((o) => o.value === value)) {
        // a class of the model with no image in this run: listed, with its count
        select.append(element("option", { className: "extra", value,
          text: `${labelOf(classIndex)} (0)` }));
      }
      select.value = value;
    }
    renderTitle(view, classIndex);
  }

  function labelOf(classIndex) {
    const found = state.summary?.classes.find((c) => c.class_index === classIndex);
    return found?.label ?? model.classes[classIndex] ?? `class ${classIndex}`;
  }

  function renderControls(view) {
    for (const button of root.querySelectorAll("#sort button")) {
      button.setAttribute("aria-pressed", String(button.dataset.sort === view.sort));
    }
    // "In box" sorts a detector's maps: offered for a detector's run (or when the address asks)
    const kind = state.runs.find((r) => r.name === view.run)?.kind;
    root.querySelector("#sort button[data-sort=energy_in_box]").hidden =
      kind !== "detection" && view.sort !== "energy_in_box";
    const order = view.order ?? defaultOrder(view.sort);
    const [high, low] = root.querySelectorAll("#order button");
    high.textContent = view.sort === "name" ? "Z to A" : "Highest first";
    low.textContent = view.sort === "name" ? "A to Z" : "Lowest first";
    high.setAttribute("aria-pressed", String(order === "desc"));
    low.setAttribute("aria-pressed", String(order === "asc"));
  }

  function renderTitle(view, classIndex) {
    let title = "All images";
    if (view.status === "failed") title = "Failed images";
    else if (classIndex !== null) title = labelOf(classIndex);
    else if (view.class) title = `Class “${view.class}”`;
    if (view.status === "wrong") title = view.class ? `${title}: mistakes` : "Mistakes";
    $("gallery-title").textContent = title;
  }

  function renderCount() {
    const view = state.view;
    const order = view.order ?? defaultOrder(view.sort);
    const direction = view.sort === "name" ? (order === "asc" ? "A to Z" : "Z to A")
      : (order === "desc" ? "highest first" : "lowest first");
    const shown = state.items.length < state.total
      ? `${state.items.length.toLocaleString("en")} of ${plural(state.total, "image")}`
      : plural(state.total, "image");
    $("gallery-count").textContent = view.status === "failed" ? shown
      : `${shown} · by ${SORT_NAMES[view.sort]}, ${direction}`;
    $("no-images").hidden = state.total > 0;
    $("no-images").textContent = "No image of this run matches.";
    $("more").hidden = state.items.length >= state.total;
  }

  // The next page of the list (once at a time); resolves when it is on screen.
  function loadMore() {
    if (state.loading) return state.loading;
    if (state.items.length && state.items.length >= state.total) return Promise.resolve();
    const view = state.view;
    const generation = state.generation;
    const params = new URLSearchParams({ sort: view.sort, offset: String(state.items.length),
      limit: String(PAGE) });
    if (view.order) params.set("order", view.order);
    if (view.class) params.set("class", view.class);
    if (view.status !== "all") params.set("status", view.status);
    $("load-more").disabled = true;
    state.loading = getRunImages(view.run, params)
      .then((page) => {
        if (generation !== state.generation || disposed) return;
        const start = state.items.length;
        if (start === 0 && view.class) showClass(view, page.class_index ?? null);
        state.items.push(...page.images);
        state.total = page.total;
        $("thumbs").append(...page.images.map((item, i) => tile(item, start + i)));
        renderCount();
      })
      .catch((error) => {
        if (generation !== state.generation) return;
        say(error.message);
        $("no-images").hidden = true;
        if (!state.items.length && view.class && error.parameter === "class") {
          // the class list says it too, rather than "All images" over an empty list
          const select = $("class-filter");
          select.append(element("option", { className: "extra", value: `?${view.class}`,
            text: `“${view.class}”: not a class of this run` }));
          select.value = `?${view.class}`;
        }
      })
      .finally(() => {
        if (generation === state.generation) {
          state.loading = null;
          $("load-more").disabled = false;
          // still room on the screen (a tall window, a short page): fill it
          if (!disposed && nearBottom() && state.items.length < state.total && !state.open) loadMore();
        }
      });
    return state.loading;
  }

  function nearBottom() {
    const more = $("more");
    return !more.hidden && more.getBoundingClientRect().top < window.innerHeight + 600;
  }

  function tile(item, index) {
    const map = item.focus === null ? null : item.maps[item.focus];
    const name = baseName(item.image);
    const button = element("button", { type: "button", className: "thumb",
      "data-id": String(item.id), "data-index": String(index), title: item.image });
    const frame = element("div", { className: "thumb-frame" });
    if (item.error) {
      button.classList.add("failed");
      frame.append(element("span", { className: "thumb-error", text: item.error }),
        element("span", { className: "badge error", text: "error" }));
    } else if (map?.overlay) {
      const image = element("img", { src: map.overlay, loading: "lazy", decoding: "async",
        draggable: "false", alt: `${shortLabel(map.label)}, ${methodName(map.method)}, over ${name}` });
      if (item.size) {
        image.width = item.size[0];
        image.height = item.size[1];
      }
      frame.append(image);
      if (map.flat) frame.append(element("span", { className: "badge flat", text: "flat" }));
    } else if (item.detections && !item.detections.length) {
      if (item.detections_overlay) {
        frame.append(element("img", { src: item.detections_overlay, loading: "lazy", decoding: "async",
          draggable: "false", alt: `${name}: no detection` }));
      }
      frame.append(element("span", { className: "badge flat", text: "no detection" }));
    }
    const lines = [element("span", { className: "thumb-name", text: name })];
    const detection = detectionOf(item, map);
    if (detection) {
      lines.push(element("span", { className: "thumb-class" },
        element("span", { className: "thumb-label", text: shortLabel(detection.label), title: map.label }),
        element("span", { className: "score", text: percent(detection.score) })));
    } else if (map) {
      lines.push(element("span", { className: "thumb-class" },
        element("span", { className: "thumb-label", text: shortLabel(map.label), title: map.label }),
        element("span", { className: "score", text: percent(map.score) })));
    } else if (item.detections) {
      lines.push(element("span", { className: "thumb-class" },
        element("span", { className: "thumb-label", text: plural(item.detections.length, "detection") })));
    } else if (!item.error && item.prediction) {
      lines.push(element("span", { className: "thumb-class" },
        element("span", { className: "thumb-label", text: shortLabel(item.prediction.label) }),
        element("span", { className: "score", text: percent(item.prediction.score) })));
    }
    // what line 2 does not say: the top-1 when the map shown is another class's, or the true
    // class when the top-1 (shown) is wrong
    const notes = [];
    const value = valueText(state.view.sort, map);
    if (value) notes.push(element("span", { text: value }));
    const top = item.prediction;
    const wrong = Boolean(item.truth && top && item.truth.class_index !== top.class_index);
    if (detection) {
      notes.push(element("span", { text: plural(item.detections?.length ?? 0, "detection") }));
    } else if (top && map && map.class_index !== top.class_index) {
      notes.push(element("span", { className: wrong ? "wrong" : "", title: top.label,
        text: `top-1 ${shortLabel(top.label)} ${percent(top.score)}` }));
    } else if (wrong) {
      notes.push(element("span", { className: "wrong", title: `true class: ${item.truth.label}`,
        text: `is ${shortLabel(item.truth.label)}` }));
    }
    if (notes.length) lines.push(element("span", { className: "thumb-notes" }, ...notes));
    button.append(frame, element("span", { className: "thumb-text" }, ...lines));
    button.addEventListener("click", () => go({ image: item.id }, { push: true }));
    return element("li", {}, button);
  }

  // --- one image -------------------------------------------------------------------------------

  async function openImage(id) {
    let index = state.items.findIndex((item) => item.id === id);
    let item = index >= 0 ? state.items[index] : null;
    if (!item) {
      const params = new URLSearchParams();
      if (state.view.class) params.set("class", state.view.class);
      try {
        item = await getRunImage(state.view.run, id, params);
      } catch (error) {
        say(error.message);
        go({ image: null });
        return;
      }
      if (disposed || state.view.image !== id) return;
      index = state.items.findIndex((i) => i.id === id);
    }
    if (!state.open) state.scroll = window.scrollY;
    state.open = item;
    state.openIndex = index;
    renderDetail(item);
    $("grid-view").hidden = true;
    $("detail").hidden = false;
    // the image's top on screen, where the list was (not the page's top: on a phone, the filters)
    const panel = root.querySelector(".gallery-panel");
    if (panel.getBoundingClientRect().top < 0) panel.scrollIntoView({ block: "start" });
    if (!root.querySelector("#detail").contains(document.activeElement)) $("detail-back").focus();
  }

  function closeImage() {
    if (!state.open) return;
    const id = state.open.id;
    state.open = null;
    state.openIndex = -1;
    state.pushed = false;
    $("detail").hidden = true;
    $("grid-view").hidden = false;
    window.scrollTo({ top: state.scroll });
    const thumb = root.querySelector(`.thumb[data-id="${id}"]`);
    if (thumb) {
      thumb.focus({ preventScroll: true });
      thumb.scrollIntoView({ block: "nearest" });
    }
    if (nearBottom()) loadMore();
  }

  function back() {
    if (state.pushed) window.history.back();
    else go({ image: null });
  }

  async function step(direction) {
    if (!state.open || state.openIndex < 0) return;
    const next = state.openIndex + direction;
    if (next < 0) return;
    if (next >= state.items.length && state.items.length < state.total) await loadMore();
    if (next < state.items.length) go({ image: state.items[next].id });
  }

  function renderDetail(item) {
    const name = baseName(item.image);
    $("detail-title").textContent = name;
    $("detail-title").title = item.image;
    $("detail-position").textContent = state.openIndex >= 0
      ? `${(state.openIndex + 1).toLocaleString("en")} of ${state.total.toLocaleString("en")}` : "";
    $("detail-prev").disabled = state.openIndex <= 0;
    $("detail-next").disabled = state.openIndex < 0 || state.openIndex >= state.total - 1;

    const meta = [element("span", { className: "path", text: item.image })];
    if (item.size) meta.push(element("span", { text: `${item.size[0]} × ${item.size[1]}` }));
    if (item.truth) {
      const right = item.prediction?.class_index === item.truth.class_index;
      meta.push(element("span", { className: right ? "right" : "wrong",
        text: `true class: ${item.truth.label}${right ? " ✓" : ` ✗ (top-1 ${shortLabel(item.prediction?.label ?? "none")})`}` }));
    }
    if (item.report) {
      meta.push(element("a", { href: item.report, target: "_blank", rel: "noopener", text: "report JSON" }));
    }
    $("detail-meta").replaceChildren(...meta.flatMap((part, i) => (i ? [" · ", part] : [part])));

    $("detail-predictions").replaceChildren(...item.predictions.map((p, rank) => {
      const chip = element("li", { className: "chip", title: p.label },
        element("span", { className: "rank", text: String(rank + 1) }),
        element("span", { className: "label", text: shortLabel(p.label) }),
        element("span", { className: "score", text: percent(p.score) }));
      if (item.truth?.class_index === p.class_index) chip.classList.add("truth");
      return chip;
    }));

    $("detail-error").hidden = !item.error;
    $("detail-error").textContent = item.error ?? "";

    const pairs = new Set(item.maps.map((m) => `${m.method}\u0000${m.layer}`));
    const shown = pairedMaps(item);
    const before = outputCards(item, name); // the segmentation or the detections, first
    const cards = item.maps.length + before.length;
    // a mistake with its contrast maps: two columns, each top-1 map beside its contrast
    const columns = shown.paired ? 2 : cards <= 1 ? 1 : Math.min(4, Math.max(2, pairs.size + before.length));
    $("detail-maps").style.setProperty("--columns", String(columns));
    $("detail-maps").style.setProperty("--rows", String(Math.min(2, Math.ceil(cards / columns))));
    $("detail-maps").replaceChildren(...before, ...shown.maps.map(({ map: m, index: i, role }) => {
      const frame = element("div", { className: "frame" });
      const [width, height] = item.size ?? [4, 3];
      frame.style.setProperty("--ratio", `${width} / ${height}`);
      frame.style.setProperty("--aspect", String(width / height));
      if (m.overlay) {
        frame.append(element("img", { src: m.overlay, draggable: "false",
          alt: `${shortLabel(m.label)}, ${methodName(m.method)} at ${m.layer}, over ${name}` }));
      }
      const parts = [];
      if (role === "top1") {
        parts.push(element("span", { className: "role", text: "Top-1" }));
      } else if (role === "versus") {
        parts.push(element("span", { className: "role wrong", text: "Versus the true class" }));
      }
      if (role === "versus") {
        const [top, truth] = [item.prediction.label, item.truth.label];
        parts.push(element("strong", { text: `${shortLabel(top)} vs ${shortLabel(truth)}`,
          title: m.explained ?? m.label }));
        if (m.value !== null && m.value !== undefined) {
          parts.push(element("span", { className: "score", title: "the difference of the two classes' logits",
            text: signed(m.value) }));
        }
      } else if (detectionOf(item, m)) {
        const d = detectionOf(item, m);
        parts.push(element("strong", { text: shortLabel(d.label), title: m.label }),
          element("span", { className: "score", title: "the detector's score", text: percent(d.score) }));
      } else {
        parts.push(element("strong", { text: shortLabel(m.label), title: m.label }),
          element("span", { className: "score", text: percent(m.score) }));
      }
      parts.push(element("span", { className: "tag", text: methodName(m.method) }),
        element("span", { className: "tag layer", text: m.layer }));
      if (role === "versus") {
        parts.push(element("span", { className: "why",
          text: `where the model saw ${shortLabel(item.prediction.label)} rather than ${shortLabel(item.truth.label)}` }));
      }
      if (m.flat) {
        parts.push(element("span", { className: "flat", text: "flat map: no evidence for this class" }));
      } else {
        const numbers = [];
        if (m.energy_in_box !== null && m.energy_in_box !== undefined) {
          numbers.push(`${inBoxText(m.energy_in_box)} (${boxText(m.target.box)})`);
        }
        if (m.spread !== null) numbers.push(`spread ${Math.round(100 * m.spread)}%`);
        if (m.off_center !== null) numbers.push(`off-center ${m.off_center.toFixed(2)}`);
        parts.push(element("span", { className: "peak-text", text: numbers.join(" · ") }));
      }
      const card = element("figure", { className: "card map-card" }, frame,
        element("figcaption", {}, ...parts));
      if (role) card.dataset.role = role;
      if (i === item.focus && state.view.class) card.classList.add("focus");
      return card;
    }));
  }

  // The card of what a segmentation model or a detector made of the image, before its maps: the
  // photo with its segmentation (the classes with their share of the pixels) or its boxes.
  function outputCards(item, name) {
    const frame = (source, alt) => {
      const box = element("div", { className: "frame" });
      const [width, height] = item.size ?? [4, 3];
      box.style.setProperty("--ratio", `${width} / ${height}`);
      box.style.setProperty("--aspect", String(width / height));
      if (source) box.append(element("img", { src: source, draggable: "false", alt }));
      return box;
    };
    if (item.segmentation) {
      const classes = item.segmentation.map((s) => `${shortLabel(s.label)} ${percent(s.share)}`);
      const card = element("figure", { className: "card map-card output-card", "data-role": "segments" },
        frame(item.segments_overlay, `the predicted segmentation of ${name}`),
        element("figcaption", {},
          element("strong", { text: "Segmentation" }),
          element("span", { className: "tag", text: plural(item.segmentation.length, "class") }),
          element("span", { className: "peak-text segments-text", title: "share of the pixels",
            text: classes.join(" · ") })));
      return [card];
    }
    if (item.detections && !item.error) {
      // the detections, best first: those explained (a map each, below) marked
      const explained = new Set(item.maps.map((m) => detectionOf(item, m)?.box.join()));
      const listed = item.detections.slice(0, 12).map((d) => element("li", {
        className: explained.has(d.box.join()) ? "explained" : "" },
      element("span", { className: "label", text: shortLabel(d.label) }),
      element("span", { className: "score", text: percent(d.score) }),
      element("span", { className: "box", text: boxText(d.box) })));
      const more = item.detections.length - listed.length;
      const text = item.detections.length ? `${plural(item.detections.length, "detection")}, best first`
        + `${more > 0 ? ` (${more.toLocaleString("en")} more in the report)` : ""}; ${plural(item.maps.length, "map")} below`
        : "No detection scored at least the run's minimum score: no map.";
      const card = element("figure", { className: "card map-card output-card detections-card", "data-role": "detections" });
      if (item.detections_overlay) card.append(frame(item.detections_overlay, `the detections in ${name}`));
      card.append(element("figcaption", {}, element("strong", { text: "Detections" }),
        element("span", { className: "peak-text", text })),
      element("ol", { className: "detections-list" }, ...listed));
      return [card];
    }
    return [];
  }

  // --- controls, keyboard ----------------------------------------------------------------------

  releaseAfterPointer($("class-filter"));
  $("class-filter").addEventListener("change", () => {
    const value = $("class-filter").value;
    if (value.startsWith("?")) return; // the address's unknown class, already shown
    if (value === "failed") go({ class: "", status: "failed", image: null });
    else go({ class: value, status: state.view.status === "wrong" ? "wrong" : "all", image: null });
  });
  $("mistakes-only").addEventListener("change", () => {
    go({ status: $("mistakes-only").checked ? "wrong" : "all", image: null });
  });
  for (const button of root.querySelectorAll("#sort button")) {
    button.addEventListener("click", () => go({ sort: button.dataset.sort, order: null, image: null }));
  }
  for (const button of root.querySelectorAll("#order button")) {
    button.addEventListener("click", () => {
      const order = button.dataset.order;
      go({ order: order === defaultOrder(state.view.sort) ? null : order, image: null });
    });
  }
  $("load-more").addEventListener("click", () => loadMore());
  $("detail-back").addEventListener("click", back);
  $("detail-prev").addEventListener("click", () => step(-1));
  $("detail-next").addEventListener("click", () => step(1));

  const observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && !state.open) loadMore();
  }, { rootMargin: "600px 0px" });
  observer.observe($("more"));

  function columns() {
    const template = getComputedStyle($("thumbs")).gridTemplateColumns;
    return Math.max(1, template.split(" ").filter(Boolean).length);
  }

  function keydown(event) {
    const target = event.target;
    if (target instanceof HTMLSelectElement || target instanceof HTMLInputElement) return false;
    if (event.ctrlKey || event.metaKey || event.altKey) return false;
    const key = event.key;
    if (state.open) {
      if (key === "ArrowLeft") step(-1);
      else if (key === "ArrowRight") step(1);
      else if (key === "Escape") back();
      else return false;
      return true;
    }
    const moves = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns(), ArrowDown: columns() };
    if (!(key in moves)) return false;
    const thumbs = [...root.querySelectorAll(".thumb")];
    if (!thumbs.length) return false;
    const at = thumbs.indexOf(document.activeElement);
    const next = at < 0 ? 0 : Math.min(thumbs.length - 1, Math.max(0, at + moves[key]));
    thumbs[next].focus({ preventScroll: true });
    thumbs[next].scrollIntoView({ block: "nearest" });
    if (next >= thumbs.length - columns()) loadMore();
    return true;
  }

  async function start() {
    $("no-images").hidden = false;
    $("no-images").textContent = "Reading the runs…";
    try {
      state.runs = (await getRuns()).runs;
    } catch (error) {
      say(error.message);
      $("no-images").hidden = true;
      return;
    }
    if (disposed) return;
    if (!state.runs.length) {
      $("no-images").hidden = false;
      $("no-images").textContent = "No run here yet: camlens explain PHOTOS --out FOLDER/NAME " +
        "writes one, then reload this page.";
      return;
    }
    renderRuns();
    await navigate();
  }

  start();
  return {
    keydown,
    navigate() {
      navigate();
    },
    dispose() {
      disposed = true;
      observer.disconnect();
    },
  };
}
