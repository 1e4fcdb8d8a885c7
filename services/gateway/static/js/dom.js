// Building DOM from data. Text always goes in as text nodes: nothing from the API is ever parsed as HTML.

/** el("p", {className: "x", hidden: true, attrs: {"aria-label": "…"}, on: {click: f}}, "text", node, …) */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  const { attrs = {}, on = {}, ...properties } = props;
  Object.assign(node, properties);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const [type, handler] of Object.entries(on)) node.addEventListener(type, handler);
  append(node, ...children);
  return node;
}

export function append(parent, ...children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`#${id} is missing from index.html`);
  return node;
}

/** Show an error next to what caused it: a role="alert" element in `slot`, with the problem's detail. */
export function showError(slot, error) {
  slot.replaceChildren(
    el("div", { className: "alert", attrs: { role: "alert" } },
      el("strong", {}, error.title || "Something went wrong"),
      error.detail ? el("span", {}, ` ${error.detail}`) : null),
  );
}

export function clearErrors(slot) {
  slot.replaceChildren();
}

export function formatMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
}

/** A metadata value as text: strings as they are, anything else as JSON. */
export function metadataText(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** What to call an image: its title (or name, or caption) from metadata, else its id. */
export function imageLabel(metadata, id) {
  for (const key of ["title", "name", "caption"]) {
    const value = metadata?.[key];
    if (typeof value === "string" && value.trim()) return value.trim();
  }
  return `Image ${id.slice(0, 12)}`;
}
