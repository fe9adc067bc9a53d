// Small DOM helpers. Elements are built from data with createElement and text nodes,
// never innerHTML, so text that comes from the node (model names, log lines, errors)
// can never be parsed as markup.

/** h("button", {class: "x", onclick: fn}, "Save") -> <button class="x">Save</button> */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** The same for SVG elements, which need their namespace. */
export function svg(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, props);
  append(el, children);
  return el;
}

function setProps(el, props) {
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace every child of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A status line that screen readers announce; `show(text, kind)` updates it. */
export function notice() {
  const el = h("p", { class: "notice", role: "status", hidden: true });
  el.show = (text, kind = "info") => {
    el.textContent = text;
    el.dataset.kind = kind;
    el.hidden = !text;
  };
  return el;
}

/** A button that asks once more before doing something that cannot be undone. */
export function confirmButton(label, confirmLabel, action, props = {}) {
  let armed = false;
  let timer = 0;
  const button = h("button", { type: "button", class: "danger", ...props }, label);
  button.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      button.textContent = confirmLabel;
      timer = setTimeout(() => {
        armed = false;
        button.textContent = label;
      }, 4000);
      return;
    }
    clearTimeout(timer);
    button.disabled = true;
    try {
      await action();
    } finally {
      button.disabled = false;
      armed = false;
      button.textContent = label;
    }
  });
  return button;
}

/** A "Copy" button for `text()`; clipboard access needs a secure context (loopback is).
 * `what` names the thing for screen readers ("Copy node ID"). */
export function copyButton(text, label = "Copy", what = "") {
  const button = h("button", { type: "button", class: "small", "aria-label": what ? `Copy ${what}` : null }, label);
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text());
      button.textContent = "Copied";
    } catch {
      button.textContent = "Select and copy";
    }
    setTimeout(() => (button.textContent = label), 2000);
  });
  return button;
}

/** True while the keyboard focus is inside `el`: a periodic refresh then waits, so it
 * does not pull a button out from under the user (or reset a "Confirm" click). */
export function hasFocus(el) {
  return el.contains(document.activeElement) && document.activeElement !== document.body;
}
