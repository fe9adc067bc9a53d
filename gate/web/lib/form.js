// Labelled form fields whose error is shown beside them. The error is tied to the
// input with aria-describedby and aria-invalid, so a screen reader reads it with the
// field, not only wherever it appears on screen.

import { h } from "./dom.js";

let counter = 0;

/** field({label, input, hint}) -> <div class="field"> with .setError(message | "") */
export function field({ label, input, hint }) {
  input.id ||= `field-${++counter}`;
  const hintEl = hint ? h("p", { class: "hint", id: `${input.id}-hint` }, hint) : null;
  const error = h("p", { class: "field-error", id: `${input.id}-error`, hidden: true });
  input.setAttribute("aria-describedby", [hintEl?.id, error.id].filter(Boolean).join(" "));
  const labelEl = h("label", { for: input.id }, label);
  const checkbox = input.type === "checkbox";
  const wrap = h(
    "div",
    { class: checkbox ? "field check" : "field" },
    checkbox ? [input, labelEl] : [labelEl, input],
    hintEl,
    error,
  );
  wrap.setError = (message) => {
    error.textContent = message ?? "";
    error.hidden = !message;
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  };
  return wrap;
}
