// The collection list (GET /v1/collections), shared by the search form and the gallery.
import { getJson } from "./api.js";

let current = [];
const listeners = new Set();

export function collections() {
  return current;
}

export function onCollections(listener) {
  listeners.add(listener);
}

/** Fetch the list again and tell every listener; errors go to the caller. */
export async function refreshCollections() {
  current = await getJson("/v1/collections");
  for (const listener of listeners) listener(current);
  return current;
}

/** Fill a <select> with the collections, keeping its choice (else `preferred`, else "default", else the first). */
export function fillCollectionSelect(select, list, preferred) {
  const keep = select.value || preferred;
  select.replaceChildren(...list.map((c) => new Option(`${c.name} (${c.count})`, c.name)));
  const names = list.map((c) => c.name);
  select.value = [keep, preferred, "default"].find((name) => name && names.includes(name)) ?? names[0] ?? "";
  select.disabled = list.length === 0;
}
