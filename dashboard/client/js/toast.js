// The one visible error area ([data-testid="error"], role="alert"): every failure ends up here as readable text,
// never only in the console.
import { $ } from "./dom.js";

let hideTimer;

export function showError(message) {
  const box = $("#toast");
  $("#error-text").textContent = String(message);
  box.hidden = false;
  clearTimeout(hideTimer);
  hideTimer = setTimeout(() => { box.hidden = true; }, 15000); // long enough to read, short enough not to pile up
}

/** Report an Error (ApiError or any) with its message. */
export const reportError = (err) => showError(err?.message || String(err));

export const hideError = () => { $("#toast").hidden = true; };

export function initToast() {
  $("#toast-close").addEventListener("click", () => { $("#toast").hidden = true; });
}
