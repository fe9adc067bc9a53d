// The control token prompt. When the node has `security.control_token` set, /rpc
// answers 401 until the browser presents it. The token is kept in sessionStorage:
// it lasts as long as the tab, and no other site can read it.

const KEY = "gate.controlToken";

export function getToken() {
  return sessionStorage.getItem(KEY) ?? "";
}

let pending = null; // one prompt for every call that was refused at the same time
let answer = null;
const watchers = [];

/** Whether the prompt is open, waiting for the token. */
export function tokenPending() {
  return pending !== null;
}

/** Call fn() whenever the prompt opens: the node is up, it waits for the token. */
export function onTokenWanted(fn) {
  watchers.push(fn);
}

function wire(dialog, form, input) {
  // Without a token nothing works, so Escape does not close the prompt.
  dialog.addEventListener("cancel", (event) => event.preventDefault());
  form.addEventListener("submit", () => {
    sessionStorage.setItem(KEY, input.value.trim());
    pending = null;
    answer?.();
  });
}

/** Show the prompt (with `problem` if the last token was wrong); resolves once entered. */
export function askToken(problem = "") {
  pending ??= new Promise((resolve) => {
    const dialog = document.getElementById("token-dialog");
    const form = document.getElementById("token-form");
    const input = document.getElementById("token-input");
    const error = document.getElementById("token-error");
    if (!dialog.dataset.wired) {
      wire(dialog, form, input);
      dialog.dataset.wired = "yes";
    }
    answer = resolve;
    for (const fn of watchers) fn();
    error.textContent = problem;
    error.hidden = !problem;
    input.value = "";
    dialog.showModal();
    input.focus();
  });
  return pending;
}
