// "Another class": a search over the model's labels, as an ARIA combobox, to explain a class
// outside the top five.

import { element, shortLabel } from "./dom.js";

const SUGGESTIONS = 12;

const words = (text) => text.toLowerCase().split(/[^\p{L}\p{N}]+/u).filter(Boolean);

// The classes whose label fits `query`: every word of the query starts a word of the label (or
// the query is the class index); whole words before prefixes, then the label's first name.
export function matchClasses(classes, query, limit = SUGGESTIONS) {
  const wanted = words(query);
  if (!wanted.length) return [];
  const found = [];
  classes.forEach((label, index) => {
    if (String(index) === query.trim()) {
      found.push({ index, label, rank: -1 });
      return;
    }
    const have = words(label);
    let rank = 0;
    for (const w of wanted) {
      if (have.includes(w)) continue;
      if (have.some((h) => h.startsWith(w))) rank += 1;
      else return;
    }
    const first = words(shortLabel(label));
    if (first.join(" ") === wanted.join(" ")) rank -= 0.5; // the query is the label's first name
    else if (!wanted.every((w) => first.some((h) => h.startsWith(w)))) rank += 0.5;
    found.push({ index, label, rank });
  });
  found.sort((a, b) => a.rank - b.rank || a.index - b.index);
  return found.slice(0, limit);
}

// Makes `query` (an input) search `classes` (labels by index) into `options` (a listbox);
// `onPick({index, label})` gets the class chosen (Enter, or a click).
export function searchClasses(query, options, classes, onPick) {
  let suggestions = [];
  let active = -1;
  const prefix = `${options.id || "class-options"}-option`; // unique when two searches are on a page

  function showSuggestions() {
    suggestions = matchClasses(classes, query.value);
    active = suggestions.length ? 0 : -1;
    options.replaceChildren(...suggestions.map((s, i) => {
      const item = element("li", { role: "option", id: `${prefix}-${i}`,
        "aria-selected": String(i === active), "data-class": String(s.index) },
      element("span", { text: s.label }), element("span", { className: "index", text: String(s.index) }));
      item.addEventListener("pointerdown", (event) => {
        event.preventDefault(); // the input keeps the focus until the class is chosen
        pick(s);
      });
      return item;
    }));
    if (query.value.trim() && !suggestions.length) {
      options.replaceChildren(element("li", { className: "none", text: "no class of this model fits" }));
    }
    const open = Boolean(query.value.trim());
    options.hidden = !open;
    query.setAttribute("aria-expanded", String(open));
    if (active >= 0) query.setAttribute("aria-activedescendant", `${prefix}-${active}`);
    else query.removeAttribute("aria-activedescendant");
  }

  function moveActive(direction) {
    if (!suggestions.length) return;
    active = (active + direction + suggestions.length) % suggestions.length;
    for (const [i, item] of [...options.children].entries()) {
      item.setAttribute("aria-selected", String(i === active));
    }
    options.children[active]?.scrollIntoView({ block: "nearest" });
    query.setAttribute("aria-activedescendant", `${prefix}-${active}`);
  }

  function closeSuggestions() {
    options.hidden = true;
    query.removeAttribute("aria-activedescendant");
    query.setAttribute("aria-expanded", "false");
  }

  function pick(found) {
    closeSuggestions();
    query.value = "";
    onPick(found);
  }

  query.addEventListener("input", showSuggestions);
  query.addEventListener("blur", closeSuggestions);
  query.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      moveActive(event.key === "ArrowDown" ? 1 : -1);
    } else if (event.key === "Enter" && active >= 0) {
      event.preventDefault();
      pick(suggestions[active]);
    } else if (event.key === "Escape") {
      event.stopPropagation();
      query.value = "";
      closeSuggestions();
    }
  });
}
