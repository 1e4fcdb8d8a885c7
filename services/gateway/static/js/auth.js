// API keys: asked for on a 401, kept for this tab only (sessionStorage), sent as a bearer token.
import { byId } from "./dom.js";

const STORAGE_KEY = "mmrag.apiKey";
let pending = null;

export function apiKey() {
  return sessionStorage.getItem(STORAGE_KEY);
}

export function forgetKey() {
  sessionStorage.removeItem(STORAGE_KEY);
  byId("forget-key").hidden = true;
}

export function showKeyState() {
  byId("forget-key").hidden = apiKey() === null;
}

/** Ask for a key in a modal dialog; resolves true once one is stored, false if the person cancels. */
export function askForKey(reason) {
  // Several requests may meet the 401 at once: they share one dialog.
  if (pending) return pending;
  const dialog = byId("api-key-dialog");
  const input = byId("api-key");
  byId("api-key-reason").textContent = reason || "This server requires an API key.";
  input.value = "";
  pending = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      pending = null;
      const key = input.value.trim();
      input.value = "";
      if (dialog.returnValue === "save" && key) {
        sessionStorage.setItem(STORAGE_KEY, key);
        showKeyState();
        resolve(true);
      } else {
        resolve(false);
      }
    }, { once: true });
  });
  dialog.returnValue = "";
  dialog.showModal();
  input.focus();
  return pending;
}
