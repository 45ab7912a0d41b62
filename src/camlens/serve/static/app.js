// The page: loads what the server offers, then shows a view chosen by the address's #fragment.
// A view is a function (root element, context) -> {keydown(event) -> handled?, dispose(), and
// optionally navigate(), called when the address changes within the view}; add one to VIEWS
// (and, when it should be offered, to the navigation) to add a page.

import { getMethods, getModel, getServer } from "./api.js";
import { setMethods } from "./dom.js";
import { mountExplore } from "./explore.js";
import { mountGallery } from "./gallery.js";

const VIEWS = {
  explore: { title: "Explore", mount: mountExplore, offered: () => true },
  gallery: { title: "Gallery", mount: mountGallery, offered: (ctx) => ctx.server.runs },
};

const view = document.getElementById("view");
const help = document.getElementById("help");
const helpButton = document.getElementById("help-button");
let current = null;
let currentName = null;
let context = null;

// The view named by the address: #/NAME, #/NAME/more or #/NAME?more (the view reads the rest).
function route() {
  const name = window.location.hash.replace(/^#\/?/, "").split(/[/?]/)[0] || "explore";
  return VIEWS[name] && VIEWS[name].offered(context) ? name : "explore";
}

function show() {
  const name = route();
  if (name === currentName && current?.navigate) {
    current.navigate(); // the same view, another place in it
    return;
  }
  current?.dispose();
  currentName = name;
  for (const link of document.querySelectorAll("#nav a")) {
    link.toggleAttribute("aria-current", link.dataset.view === name);
  }
  current = VIEWS[name].mount(view, context);
}

function toggleHelp(open = help.hidden) {
  help.hidden = !open;
  helpButton.setAttribute("aria-expanded", String(open));
}

async function start() {
  try {
    const [server, model, methods] = await Promise.all([getServer(), getModel(), getMethods()]);
    setMethods(methods.methods);
    context = { server, model, methods };
  } catch (error) {
    view.replaceChildren(Object.assign(document.createElement("p"), {
      className: "message error",
      textContent: `The server did not answer: ${error.message}`,
    }));
    return;
  }
  document.getElementById("help-gallery").hidden = !context.server.runs;
  document.getElementById("model-name").textContent =
    `${context.model.name} · ${context.model.num_classes} classes`;
  const offered = Object.entries(VIEWS).filter(([, v]) => v.offered(context));
  const nav = document.getElementById("nav");
  if (offered.length > 1) {
    nav.replaceChildren(...offered.map(([name, v]) => {
      const link = Object.assign(document.createElement("a"), { href: `#/${name}`, textContent: v.title });
      link.dataset.view = name;
      return link;
    }));
  }
  window.addEventListener("hashchange", show);
  document.addEventListener("keydown", (event) => {
    if (event.key === "?") {
      toggleHelp();
    } else if (event.key === "Escape" && !help.hidden) {
      toggleHelp(false);
    } else if (current?.keydown(event)) {
      event.preventDefault();
    }
  });
  helpButton.addEventListener("click", () => toggleHelp());
  show();
  document.body.dataset.ready = "true";
}

start();
