// What the photo view explains besides a class: "A versus B" (the map of y_A - y_B: why the model
// says A rather than B), every class over a threshold on a multi-label (sigmoid) model, and the
// similarity to a reference photo. The predictions are shown as the model scores them: a softmax
// distribution, independent sigmoid probabilities with the threshold line, or raw values.
//
// The explore view asks this module what to send (`adjust`), which map of an answer is the one
// on screen (`matches`), which entries follow the top five (`more`), and how to write a score.

import { element, megabytes, percent, shortLabel } from "./dom.js";
import { searchClasses } from "./classes.js";
import { imageFiles } from "./photos.js";

export const SIMILARITY = -1; // the class index the server gives a similarity map
const DEFAULT_THRESHOLD = 0.5;

const sameClasses = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);

// `view`: {model, server, photo() -> the photo on screen, result() -> its answer,
// entries() -> the classes listed, rank() -> the one chosen, selectRank(rank), update(),
// say(text, kind)}.
export function mountTargets(panel, view) {
  const { model, server } = view;
  const classes = model.classes;
  // versus, the threshold and the reference explain classes: a classifier's
  const classifier = (model.kind ?? "classifier") === "classifier";
  const state = {
    versus: null, // {photo, classIndex}: the chosen class of that photo versus this one
    above: null, // every class scoring at least this is explained (sigmoid models)
    reference: null, // {file, token, thumb}: the photo whose similarity is explained
    tokens: 0,
    asked: new WeakMap(), // photo -> {token, above}: what its latest request asked besides classes
    answered: new WeakMap(), // answer -> the same, for the request that made it
    values: new WeakMap(), // photo -> the similarity shown last (kept when a class is shown)
  };

  // How the answer on screen scores its predictions (the model's way before any answer).
  const scoring = () => view.result()?.scores ?? model.scores ?? "softmax";
  const sigmoid = () => (model.scores ?? "softmax") === "sigmoid";
  const threshold = () => state.above ?? DEFAULT_THRESHOLD;

  // --- the controls, under the predictions ---------------------------------------------------

  const versusQuery = element("input", { type: "search", id: "versus-query", autocomplete: "off",
    spellcheck: "false", placeholder: "a label, e.g. tiger cat", role: "combobox",
    "aria-autocomplete": "list", "aria-expanded": "false", "aria-controls": "versus-options" });
  const versusOptions = element("ul", { className: "class-options", id: "versus-options",
    role: "listbox", "aria-label": "Classes to compare with", hidden: "" });
  const versusNote = element("p", { className: "target-note", id: "versus-note", hidden: "" });
  const plainButton = element("button", { type: "button", id: "versus-off", hidden: "",
    text: "Plain map" });
  const versusField = element("div", { className: "field class-search", id: "versus-field" },
    element("label", { for: "versus-query", text: "Versus (why not…)" }), versusQuery, versusOptions,
    element("div", { className: "target-row" }, versusNote, plainButton));

  const aboveInput = element("input", { type: "range", id: "above", min: "0.01", max: "0.99",
    step: "0.01", value: String(DEFAULT_THRESHOLD), "aria-describedby": "above-note" });
  const aboveValue = element("output", { id: "above-value", for: "above" });
  const aboveNote = element("p", { className: "field-note", id: "above-note" });
  const aboveOff = element("button", { type: "button", id: "above-off", hidden: "",
    text: "Back to the top 5" });
  const aboveField = element("div", { className: "field threshold", id: "above-field", hidden: "" },
    element("label", { for: "above" }, "Explain every class above ", aboveValue), aboveInput,
    aboveNote, aboveOff);

  const referenceInput = element("input", { type: "file", id: "reference-file", accept: "image/*",
    className: "visually-hidden", tabindex: "-1", "aria-hidden": "true" });
  const referencePick = element("button", { type: "button", id: "reference-pick",
    text: "Choose a reference photo" });
  const referenceShown = element("div", { className: "reference-shown", id: "reference-shown",
    hidden: "" });
  const referenceError = element("p", { className: "message error", id: "reference-error",
    role: "alert", hidden: "" });
  const referenceField = element("div", { className: "field reference-drop", id: "reference-drop" },
    element("span", { className: "label", text: "Similarity to a reference" }), referenceInput,
    referencePick, element("p", { className: "field-note", id: "reference-hint",
      text: "or drop a photo here: where does the photo look like it?" }), referenceShown,
    referenceError);

  const box = element("div", { className: "targets", id: "targets", hidden: "" },
    versusField, referenceField);
  panel.append(box);
  // the threshold belongs to the list: right under it
  (panel.querySelector("#predictions") ?? box).after(aboveField);

  // --- versus --------------------------------------------------------------------------------

  // The class the chosen one is compared with, for `classIndex` of the photo on screen.
  function versusFor(classIndex, photo = view.photo()) {
    const v = state.versus;
    if (!v || v.photo !== photo || classIndex === undefined || classIndex === SIMILARITY) return null;
    return v.classIndex === classIndex ? null : v.classIndex;
  }

  // `focus`: the control to give the focus to once the list is drawn again (for the keyboard).
  function setVersus(classIndex, focus = null) {
    const chosen = view.entries()[view.rank()]?.class_index;
    if (classIndex !== null && (chosen === undefined || chosen === SIMILARITY)) {
      view.say("choose a class first: versus compares it with another", "note");
      return;
    }
    if (classIndex !== null && classIndex === chosen) {
      view.say(`${shortLabel(classes[classIndex])} versus itself explains nothing: ` +
        "choose another class", "note");
      return;
    }
    state.versus = classIndex === null ? null : { photo: view.photo(), classIndex };
    Promise.resolve(view.update()).then(() => focus && panel.querySelector(focus)?.focus());
  }

  searchClasses(versusQuery, versusOptions, classes, (found) => setVersus(found.index));
  plainButton.addEventListener("click", () => setVersus(null, "#versus-query"));

  // The button beside a listed class: why the chosen class and not this one.
  function versusButton(entry, rank) {
    if (entry.class_index === SIMILARITY) return [];
    const shown = view.entries()[view.rank()]?.class_index;
    const on = versusFor(shown) === entry.class_index;
    const name = shortLabel(entry.label);
    const why = rank === view.rank() ? "the class shown: choose another to compare it with"
      : shown === SIMILARITY ? "the similarity is shown: choose a class first"
        : on ? "back to the plain map" : `why the class shown and not ${name}`;
    const button = element("button", { type: "button", className: "versus-button",
      "aria-pressed": String(on), "data-class": String(entry.class_index), title: why,
      "aria-label": `versus ${name}` }, "vs");
    if (rank === view.rank() || shown === SIMILARITY) button.disabled = true; // nothing to compare
    button.addEventListener("click", () => setVersus(on ? null : entry.class_index,
      `.versus-button[data-class="${entry.class_index}"]`));
    return [button];
  }

  // --- the threshold (sigmoid models) --------------------------------------------------------

  function setAbove(value) {
    state.above = value;
    view.update();
  }

  aboveInput.addEventListener("input", () => showThreshold(Number(aboveInput.value)));
  aboveInput.addEventListener("change", () => setAbove(Number(aboveInput.value)));
  aboveInput.addEventListener("keydown", (event) => {
    // the arrows move the threshold, not the class chosen
    if (event.key.startsWith("Arrow") || ["Home", "End", "PageUp", "PageDown"].includes(event.key)) {
      event.stopPropagation();
    }
  });
  aboveOff.addEventListener("click", () => setAbove(null));

  // The most classes over the threshold a request asks for: as many as the server explains at
  // once (max_maps) over the methods x layers asked, and no more than the model has.
  function mostAbove(options) {
    const count = (options.methods?.length || 1) * (options.layers?.length || 1);
    const most = Number.isFinite(server.max_maps) ? Math.floor(server.max_maps / count) : Infinity;
    return Math.max(1, Math.min(classes.length, most));
  }

  // What the threshold's note says of `answer`: every class over it, or the best N of them
  // when the answer holds N, the most a request may ask for (more may be over it).
  function aboveSaid(answer) {
    const percentage = `${Math.round(state.above * 100)}%`;
    const asked = answer ? askedOf(answer) : {};
    const explained = new Set((answer?.explanations ?? [])
      .filter((m) => (!m.target || m.target.kind === "class") && m.class_index >= 0)
      .map((m) => m.class_index));
    const limit = `this server explains at most ${server.max_maps} maps a request`;
    if (asked.above !== state.above) return `Every class scoring at least ${percentage} is explained.`;
    if (asked.alone) {
      return `The class shown is past the best ${asked.top} above ${percentage}: it is ` +
        `explained alone (${limit}).`;
    }
    if (asked.top < classes.length && explained.size >= asked.top) {
      const best = asked.top === 1 ? "The best class" : `The best ${asked.top} classes`;
      return `${best} above ${percentage} ${asked.top === 1 ? "is" : "are"} explained: ${limit}.`;
    }
    return `Every class scoring at least ${percentage} is explained.`;
  }

  function showThreshold(value = threshold()) {
    aboveValue.value = `${Math.round(value * 100)}%`;
    aboveInput.value = String(value);
    for (const list of panel.querySelectorAll("#predictions")) {
      list.style.setProperty("--threshold", String(value));
      for (const button of list.querySelectorAll(".prediction[data-score]")) {
        button.classList.toggle("over", Number(button.dataset.score) >= value);
      }
    }
  }

  // --- the reference photo -------------------------------------------------------------------

  function setReference(file) {
    if (file && file.size > server.max_upload_bytes) {
      referenceError.textContent = `${file.name}: ${megabytes(file.size)}, over this server's ` +
        `limit of ${megabytes(server.max_upload_bytes)}`;
      referenceError.hidden = false;
      return;
    }
    if (state.reference?.thumb) URL.revokeObjectURL(state.reference.thumb);
    referenceError.hidden = true;
    state.tokens += 1;
    state.reference = file ? { file, token: state.tokens, thumb: URL.createObjectURL(file) } : null;
    showReference();
    const entries = view.entries();
    if (file) view.selectRank(entries.length - 1); // the similarity, last in the list
    else if (view.rank() >= entries.length) view.selectRank(0);
    else view.update();
  }

  function showReference() {
    const ref = state.reference;
    referenceShown.hidden = !ref;
    referencePick.textContent = ref ? "Another reference photo" : "Choose a reference photo";
    if (!ref) return referenceShown.replaceChildren();
    const image = element("img", { src: ref.thumb, alt: "", draggable: "false" });
    image.addEventListener("error", () => image.remove());
    const remove = element("button", { type: "button", id: "reference-remove",
      "aria-label": `Remove the reference ${ref.file.name}`, text: "Remove" });
    remove.addEventListener("click", () => {
      setReference(null);
      referencePick.focus();
    });
    referenceShown.replaceChildren(image,
      element("span", { className: "reference-name", text: ref.file.name, title: ref.file.name }),
      remove);
  }

  referencePick.addEventListener("click", () => referenceInput.click());
  referenceInput.addEventListener("change", () => {
    if (referenceInput.files.length) setReference(referenceInput.files[0]);
    referenceInput.value = "";
  });
  // A photo dropped here is the reference (not a photo to explain): the page's own drop does
  // not see it. While something is dragged, this zone shows above the page's drop veil.
  referenceField.addEventListener("dragover", (event) => {
    if (![...event.dataTransfer.types].includes("Files")) return;
    event.preventDefault();
    document.body.classList.add("dragging", "to-reference");
  });
  referenceField.addEventListener("dragleave", (event) => {
    if (!referenceField.contains(event.relatedTarget)) document.body.classList.remove("to-reference");
  });
  referenceField.addEventListener("drop", async (event) => {
    document.body.classList.remove("dragging", "to-reference");
    if (!event.dataTransfer.files.length) return;
    event.preventDefault();
    event.stopPropagation();
    const { files } = await imageFiles(event.dataTransfer);
    if (!files.length) view.say("no image was dropped as the reference");
    else setReference(files[0]);
  });

  // The reference token and the threshold an answer was asked with (those of the latest request
  // for its photo, the one whose answer is kept).
  function askedOf(answer, photo = view.photo()) {
    if (!state.answered.has(answer)) state.answered.set(answer, state.asked.get(photo) ?? {});
    return state.answered.get(answer);
  }

  // --- what the explore view asks of this module ---------------------------------------------

  return {
    // Whether `map` of `answer` is what is shown for `classIndex` (the plain class map, its
    // contrast with the class chosen to compare, or the similarity to the reference).
    matches(map, classIndex, answer) {
      if (classIndex === SIMILARITY) {
        return map.target?.kind === "similarity" && Boolean(state.reference)
          && askedOf(answer).token === state.reference.token;
      }
      if (map.class_index !== classIndex) return false;
      const versus = versusFor(classIndex);
      if (versus === null) {
        if (map.target && map.target.kind !== "class") return false;
        // over the threshold asked for: from an answer that explained every class over it
        const wide = state.above !== null && sigmoid() && map.score >= state.above;
        return !wide || askedOf(answer).above === state.above;
      }
      return map.target?.kind === "contrast" && sameClasses(map.target.classes ?? [], [classIndex, versus]);
    },

    // The request for `classIndex` of `photo` (undefined: a new photo, its top five), with
    // what the page explains besides a class.
    adjust(options, classIndex, photo) {
      if (classIndex === SIMILARITY && state.reference) {
        delete options.top;
        delete options.classes;
        options.like = state.reference.file;
        state.asked.set(photo, { token: state.reference.token });
        return options;
      }
      state.asked.set(photo, {});
      const versus = versusFor(classIndex, photo);
      if (versus !== null) {
        delete options.top;
        options.classes = [classIndex];
        options.versus = [versus];
      } else if (state.above !== null && sigmoid()) {
        const predictions = photo?.result?.predictions ?? [];
        const rank = predictions.findIndex((p) => p.class_index === classIndex);
        const most = mostAbove(options);
        // every class over the threshold (the chosen one among them), at most as many as the
        // server allows; a class ranked past those is asked for alone
        const over = rank >= 0 && predictions[rank].score >= state.above;
        if (classIndex === undefined || rank < 0 || (over && rank < most)) {
          delete options.classes;
          options.top = most;
          options.above = state.above;
          state.asked.set(photo, { above: state.above, top: most });
        } else if (over) { // asked for alone (explore's classes): its map is that answer's
          state.asked.set(photo, { above: state.above, top: most, alone: true });
        }
      }
      return options;
    },

    // The entries listed after the top five: the classes over the threshold beyond them, then
    // the similarity to the reference.
    more(answer, listed) {
      const out = [];
      if (state.above !== null && answer && askedOf(answer).above === state.above) {
        const seen = new Set(listed.map((p) => p.class_index));
        for (const map of answer.explanations) {
          if (map.target || map.class_index < 0 || seen.has(map.class_index)) continue;
          seen.add(map.class_index);
          out.push({ class_index: map.class_index, label: map.label, score: map.score, over: true });
        }
        out.sort((a, b) => b.score - a.score);
      }
      return out;
    },

    // The similarity entry, last in the list, while a reference is set.
    reference(answer) {
      if (!state.reference) return [];
      const photo = view.photo();
      const map = answer?.explanations.find((e) => this.matches(e, SIMILARITY, answer));
      if (map) state.values.set(photo, map.value);
      return [{ class_index: SIMILARITY, label: `like ${state.reference.file.name}`,
        score: state.values.get(photo), similarity: true }];
    },

    // A listed score as the model means it: a probability, or a raw output as it is.
    score(value, entry = null) {
      if (value === undefined || value === null) return "";
      if (entry?.similarity) return `cos ${value.toFixed(2)}`;
      if (scoring() === "raw") return Number(value).toPrecision(3);
      return percent(value);
    },

    // The list's look: independent bars and the threshold line (sigmoid), no bars (raw).
    decorate(list, button, entry) {
      if (!classifier) return []; // a segment or a detection: no versus, no threshold
      const kind = scoring();
      list.dataset.scores = kind;
      if (kind === "sigmoid" && Number.isFinite(entry.score)) {
        list.style.setProperty("--threshold", String(threshold()));
        button.dataset.score = String(entry.score);
        button.classList.toggle("over", entry.score >= threshold());
      }
      if (entry.similarity) button.classList.add("similarity");
      return versusButton(entry, Number(button.dataset.rank));
    },

    // The caption's first words for a map of a target (null: a class, as before).
    caption(map) {
      const target = map.target;
      const name = (c) => shortLabel(classes[c] ?? c);
      const value = (text, title) => (Number.isFinite(map.value)
        ? [element("span", { className: "score value", text, title })] : []);
      if (target?.kind === "contrast") {
        const [a, ...others] = target.classes;
        const signed = map.value >= 0 ? `+${map.value.toFixed(2)}` : map.value?.toFixed(2);
        return [element("strong", { className: "explained", title: map.explained,
          text: `${name(a)} versus ${others.map(name).join(", ")}` }),
        ...value(`logit difference ${signed}`, `the difference of their scores, y_A − y_B ` +
          `(${map.value}); the map is high where the photo makes it ${name(a)} rather than ` +
          `${others.map(name).join(", ")}`)];
      }
      if (target?.kind === "similarity") {
        return [element("strong", { className: "explained", text: map.explained }),
          ...value(`cosine ${map.value?.toFixed(2)}`,
            "the cosine similarity of the two photos' features (1: alike)")];
      }
      return null;
    },

    // What the list and the controls show, after each render of the explore view.
    render() {
      const answer = view.result();
      box.hidden = !answer || !classifier;
      const chosen = view.entries()[view.rank()];
      const versus = versusFor(chosen?.class_index);
      plainButton.hidden = versus === null;
      versusNote.hidden = versus === null;
      versusNote.textContent = versus === null ? ""
        : `The map: what makes it ${shortLabel(chosen.label)} rather than ` +
          `${shortLabel(classes[versus])}.`;
      aboveField.hidden = !sigmoid() || !answer;
      aboveOff.hidden = state.above === null;
      aboveNote.textContent = state.above === null
        ? "Independent scores (sigmoid): several classes can be high at once. The line is at " +
          `${DEFAULT_THRESHOLD * 100}%; move it to explain every class over it.`
        : aboveSaid(answer);
      showThreshold();
    },

    // `above=P` in the address (a sigmoid model only); false when it cannot apply.
    read(params, refused) {
      if (!params.has("above")) return;
      const value = params.get("above");
      const number = Number(value);
      if (sigmoid() && value !== "" && number > 0 && number < 1) state.above = number;
      else refused.push(`above=${value}`);
    },

    write(params) {
      if (state.above !== null) params.set("above", String(state.above));
    },

    // The file names of a map's downloads: the class, its contrast, or "like".
    tag(map) {
      if (map.target?.kind === "contrast") return map.target.classes.join("-vs-");
      if (map.target?.kind === "similarity") return "like";
      return String(map.class_index);
    },

    // A request refused: a reference the server cannot read is taken away, with the reason.
    failed(error) {
      if (error.parameter !== "like" || !state.reference) return;
      URL.revokeObjectURL(state.reference.thumb);
      state.reference = null;
      showReference();
      referenceError.textContent = error.message;
      referenceError.hidden = false;
      view.selectRank(0);
    },

    dispose() {
      if (state.reference?.thumb) URL.revokeObjectURL(state.reference.thumb);
    },
  };
}
