// Modal dialogs: the bearer-token prompt (asked once, kept in sessionStorage) and the confirmation dialog.
// Custom <dialog>s instead of window.prompt/confirm: they are styleable, testable and do not block the page.
import { $ } from "./dom.js";
import { hideError } from "./toast.js";

const TOKEN_KEY = "tidal.token";

export const getToken = () => sessionStorage.getItem(TOKEN_KEY);

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  renderTokenStatus();
}

export function renderTokenStatus() {
  const has = Boolean(getToken());
  $("#token-status").textContent = has ? "Token set" : "No token";
  $("#token-status").classList.toggle("ok", has);
  $("#token-forget").hidden = !has;
}

/** The stored token, or ask for it once; rejects when the user cancels. */
export function requireToken() {
  const stored = getToken();
  if (stored) return Promise.resolve(stored);
  const dialog = $("#token-dialog"), input = $("#token-input");
  input.value = "";
  return new Promise((resolve, reject) => {
    dialog.addEventListener("close", () => {
      const token = input.value.trim();
      input.value = "";
      if (dialog.returnValue === "save" && token) {
        sessionStorage.setItem(TOKEN_KEY, token);
        renderTokenStatus();
        hideError(); // an earlier "token refused" message is now stale
        resolve(token);
      } else reject(new Error("A bearer token is needed for this action."));
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  });
}

/** Resolves true when the user confirms. */
export function confirmDialog(title, text, okLabel = "Confirm") {
  const dialog = $("#confirm-dialog");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

export function initDialogs() {
  $("#token-cancel").addEventListener("click", () => $("#token-dialog").close("cancel"));
  $("#confirm-ok").addEventListener("click", () => $("#confirm-dialog").close("ok"));
  $("#confirm-cancel").addEventListener("click", () => $("#confirm-dialog").close("cancel"));
  $("#token-forget").addEventListener("click", forgetToken);
  renderTokenStatus();
}
