// What every view draws with: elements, SVG, the numbers and names as the page writes them, and
// the methods' display names (from GET /api/methods, set once when the page starts).

import { colormapUrl } from "./api.js";

const SVG = "http://www.w3.org/2000/svg";
const titles = new Map();

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

export function svg(tag, attributes = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

// The methods as the server lists them: a method's `title` when the server gives one, else its name.
export function setMethods(methods) {
  titles.clear();
  for (const m of methods) titles.set(m.name, m.title || m.name);
}

export const methodName = (name) => titles.get(name) ?? name;

export function percent(score) {
  return score >= 0.001 ? `${(100 * score).toFixed(1)}%` : "<0.1%";
}

export function megabytes(bytes) {
  return `${(bytes / 2 ** 20).toFixed(1).replace(/\.0$/, "")} MB`;
}

export const shortLabel = (label) => String(label).split(",")[0];
export const plural = (n, word) =>
  `${n.toLocaleString("en")} ${word}${n === 1 ? "" : word.endsWith("s") ? "es" : "s"}`;

// A select chosen with the mouse gives the focus back, so that the single-key shortcuts act on
// the page instead of picking an option by its first letter. Chosen with the keyboard, it keeps it.
export function releaseAfterPointer(select) {
  let pointer = false;
  select.addEventListener("pointerdown", () => { pointer = true; });
  select.addEventListener("keydown", () => { pointer = false; });
  select.addEventListener("change", () => {
    if (pointer) select.blur();
    pointer = false;
  });
}

// The colorbar of a colormap: low to high, as the server colours a map (0 to its maximum).
export function colorbar(cmap) {
  const bar = element("img", { className: "colorbar-strip", alt: "", draggable: "false",
    src: colormapUrl(cmap) });
  return element("div", { className: "colorbar", role: "img",
    "aria-label": `colormap ${cmap}: low to high` },
  element("span", { text: "low" }), bar, element("span", { text: "high" }));
}
