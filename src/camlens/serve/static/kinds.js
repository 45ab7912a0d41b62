// What the photo view lists and explains for a model that is not a classifier (GET /api/model's
// `kind`): a segmentation model's segments (each class present with its share of the pixels;
// its map shows the class's pixels outlined) and a detector's detections (label and score, with
// the minimum score as a slider; its map shows its box). A classifier's list is the top five, as
// explore.js and targets.js make it: there every function here answers "not mine" (null).

import { element, percent, shortLabel, svg } from "./dom.js";

const DETECTION = "det:"; // an entry's key for detection i: "det:i"
const MOST_DETECTIONS = 10; // asked for at once: each is a backward pass's row

// Python's round(): halves to the even neighbour (22.5 -> 22), as the server's file names.
function roundHalfEven(value) {
  const floor = Math.floor(value);
  const rest = value - floor;
  if (Math.abs(rest - 0.5) > 1e-9) return Math.round(value);
  return floor % 2 === 0 ? floor : floor + 1;
}

const near = (a, b) => a.length === b.length && a.every((v, i) => Math.abs(v - b[i]) < 0.01);

// `view`: {model, server, result() -> the answer on screen, update()}.
export function mountKind(panel, view) {
  const { model, server } = view;
  const kind = model.kind ?? "classifier";
  const background = new Set(model.background ?? []);
  const DEFAULT_MIN_SCORE = model.min_score ?? 0.5; // the server's, when it gives none
  const state = { minScore: DEFAULT_MIN_SCORE };

  // the empty page says what will be listed
  const listed = { segmentation: "segments (the classes present, with their share of the pixels)",
    detection: "detections" }[kind];
  const empty = panel.closest(".explore")?.querySelector("#empty");
  if (listed && empty) {
    const pick = "pick one to see where the model looks for it.";
    empty.querySelector("p.wide-only")?.replaceChildren("or press ", element("kbd", { text: "o" }),
      ` to choose them. The model's ${listed} appear on the right; ${pick}`);
    empty.querySelector("p.narrow-only")?.replaceChildren(
      `The model's ${listed} appear below the photo; ${pick}`);
  }
  const title = panel.querySelector("#predictions-title");
  if (title && kind === "segmentation") title.textContent = "Segments";
  if (title && kind === "detection") title.textContent = "Detections";

  // --- the minimum score of a detector's detections ------------------------------------------

  const minInput = element("input", { type: "range", id: "min-score", min: "0", max: "0.99",
    step: "0.01", value: String(DEFAULT_MIN_SCORE), "aria-describedby": "min-score-note" });
  const minValue = element("output", { id: "min-score-value", for: "min-score" });
  const minNote = element("p", { className: "field-note", id: "min-score-note" });
  const minField = element("div", { className: "field threshold", id: "min-score-field",
    hidden: "" }, element("label", { for: "min-score" }, "Detections scored at least ", minValue),
  minInput, minNote);
  if (kind === "detection") (panel.querySelector("#predictions") ?? panel).after(minField);

  function showMinScore() {
    minValue.value = `${Math.round(state.minScore * 100)}%`;
    minInput.value = String(state.minScore);
  }
  minInput.addEventListener("input", () => {
    state.minScore = Number(minInput.value);
    showMinScore();
  });
  minInput.addEventListener("change", () => {
    state.minScore = Number(minInput.value);
    view.update(true);
  });
  minInput.addEventListener("keydown", (event) => {
    if (event.key.startsWith("Arrow") || ["Home", "End", "PageUp", "PageDown"].includes(event.key)) {
      event.stopPropagation(); // the arrows move the slider, not the detection chosen
    }
  });

  // The most detections a request asks for: as many maps as the server explains at once.
  function most(options) {
    const count = (options.methods?.length || 1) * (options.layers?.length || 1);
    const allowed = Number.isFinite(server.max_maps) ? Math.floor(server.max_maps / count) : Infinity;
    return Math.max(1, Math.min(MOST_DETECTIONS, allowed));
  }

  const detectionOf = (key, answer = view.result()) => (typeof key === "string"
    && key.startsWith(DETECTION) ? answer?.detections?.[Number(key.slice(DETECTION.length))] : null);

  return {
    kind,
    classifier: kind === "classifier",

    // The entries listed instead of the top five (null: a classifier's).
    entries(answer) {
      if (!answer || kind === "classifier") return null;
      if (kind === "segmentation") {
        return (answer.segmentation ?? []).map((s) => ({ class_index: s.class_index,
          label: s.label, score: s.share, segment: true }));
      }
      return (answer.detections ?? []).map((d, i) => ({ class_index: `${DETECTION}${i}`,
        label: d.label, score: d.score, detection: d }));
    },

    // The request for entry `key` (undefined: a new photo). Null: a classifier's, as it was.
    adjust(options, key, photo, top) {
      if (kind === "segmentation") {
        if (key === undefined) return options;
        // the classes top explains: the first `top` present, the background left out
        const explained = (photo?.result?.segmentation ?? [])
          .filter((s) => !background.has(s.class_index)).slice(0, top).map((s) => s.class_index);
        if (!explained.includes(key) || !("top" in options)) {
          delete options.top;
          options.classes = [key];
        }
        return options;
      }
      if (kind === "detection") {
        delete options.top;
        delete options.classes;
        options.min_score = state.minScore;
        options.detections = most(options);
        return options;
      }
      return null;
    },

    // Whether `map` is the one shown for entry `key` (undefined: a classifier's, targets.js says).
    matches(map, key, answer) {
      if (kind === "segmentation") {
        return map.class_index === key && map.target?.kind === "segment"
          && map.target.region === "predicted";
      }
      if (kind === "detection") {
        const d = detectionOf(key, answer);
        return Boolean(d) && map.target?.kind === "detection" && map.target.label === d.class_index
          && near(map.target.box, d.box);
      }
      return undefined;
    },

    // A listed score: a segment's share of the pixels, a detection's score.
    score(value, entry) {
      if (entry?.segment) return percent(value);
      if (entry?.detection) return value.toFixed(2);
      return null;
    },

    // What a map of this kind draws over its photo: a segment's region (the server's outline),
    // a detection's box with its label.
    marks(map, frame, marks, side) {
      if (map.region) {
        const region = element("img", { className: "region", alt: "", draggable: "false",
          src: `${map.region}${map.region.includes("?") ? "&" : "?"}max_side=${side}` });
        frame.append(region);
      }
      const box = map.target?.kind === "detection" ? map.target.box : null;
      if (box) {
        const [x0, y0, x1, y1] = box;
        marks.append(svg("rect", { class: "detection-halo", x: x0, y: y0, width: x1 - x0,
          height: y1 - y0 }), svg("rect", { class: "detection", x: x0, y: y0, width: x1 - x0,
          height: y1 - y0 }));
      }
    },

    // The caption's first words for a map of this kind (null: a classifier's).
    caption(map) {
      if (map.target?.kind === "segment") {
        const where = Array.isArray(map.target.region) ? ` in ${map.target.region.join(",")}`
          : map.target.region === "mask" ? " in the mask" : "";
        const name = shortLabel(model.classes[map.class_index] ?? map.label);
        return [element("strong", { className: "explained", text: `${name}${where}` }),
          element("span", { className: "score", title: "its share of the photo's pixels",
            text: `${percent(map.score)} of the pixels` })];
      }
      if (map.target?.kind === "detection") {
        const name = shortLabel(model.classes[map.target.label] ?? map.label);
        return [element("strong", { className: "explained", title: map.explained, text: name }),
          element("span", { className: "score", title: "the detection's score",
            text: `score ${Number(map.target.score).toFixed(2)}` })];
      }
      return null;
    },

    // A map's name in its downloads' file names, as the server names its files (ClassMap.tag):
    // 8, 8-box-20-10-120-90, 8-mask; 1-det-12-30-200-410 (null: a classifier's).
    tag(map) {
      const target = map.target;
      if (target?.kind === "segment") {
        if (Array.isArray(target.region)) return `${map.class_index}-box-${target.region.join("-")}`;
        return target.region === "predicted" ? String(map.class_index)
          : `${map.class_index}-${target.region}`;
      }
      if (target?.kind === "detection") {
        return `${map.class_index}-det-${target.box.map(roundHalfEven).join("-")}`;
      }
      return null;
    },

    render(answer) {
      minField.hidden = kind !== "detection" || !answer;
      showMinScore();
      const count = answer?.detections?.length;
      minNote.textContent = kind !== "detection" || !answer ? ""
        : count ? `${count} detection${count === 1 ? "" : "s"} at ${percent(state.minScore)} or more.`
          : `No detection scored ${percent(state.minScore)} or more: lower the minimum.`;
    },

    // `min_score=S` in the address (a detector only).
    read(params, refused) {
      if (!params.has("min_score")) return;
      const value = params.get("min_score");
      const number = Number(value);
      if (kind === "detection" && value !== "" && number >= 0 && number < 1) state.minScore = number;
      else refused.push(`min_score=${value}`);
    },

    write(params) {
      if (kind === "detection" && state.minScore !== DEFAULT_MIN_SCORE) {
        params.set("min_score", String(state.minScore));
      }
    },

    // What the stage says when the answer has nothing to show (null: it has).
    none(answer) {
      if (kind !== "detection" || !answer || answer.detections?.length) return null;
      return `No detection scored at least ${percent(state.minScore)}: lower the minimum score.`;
    },

    // Why entry `key` has no map in the answer (null: not mine to say).
    missing(key, answer) {
      const d = detectionOf(key, answer);
      if (!d) return null;
      const explained = new Set(answer.explanations.map((m) => m.target?.box?.join(",")));
      return explained.has(d.box.join(",")) ? null : "Only the best detections are explained at " +
        `once (this server explains ${server.max_maps} maps a request): this one is listed, not explained.`;
    },

    // The minimum score the answer on screen was asked with differs from the slider's.
    stale(photo) {
      return kind === "detection" && photo?.minScore !== undefined && photo.minScore !== state.minScore;
    },

    get minScore() { return state.minScore; },
  };
}
