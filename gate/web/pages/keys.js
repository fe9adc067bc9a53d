// API keys: create one (its secret is shown once, here, and never again: the node
// keeps only a hash), list them, revoke one. Keys are checked by the /v1 API when
// security.require_api_keys is on.

import { confirmButton, copyButton, fill, h, notice } from "../lib/dom.js";
import * as fmt from "../lib/format.js";
import { field } from "../lib/form.js";
import { call, INVALID_PARAMS } from "../lib/rpc.js";

export default {
  title: "API keys",
  render(main, ctx) {
    const name = h("input", { name: "name", autocomplete: "off", required: true, placeholder: "e.g. laptop, open-webui" });
    const nameField = field({ label: "Name", input: name, hint: "What the key is for; shown in the list and in request records." });
    const form = h("form", { class: "inline-form", novalidate: true }, nameField, h("div", { class: "actions" }, h("button", { type: "submit" }, "Create key")));
    const secret = h("div", { id: "new-key", class: "secret", hidden: true, role: "region", "aria-label": "New key" });
    const status = notice();
    const list = h("div", { id: "key-list" }, h("p", {}, "Loading…"));
    main.append(
      h("h1", {}, "API keys"),
      h("section", { class: "card", "aria-labelledby": "create-title" }, h("h2", { id: "create-title" }, "Create a key"), form, secret),
      h("section", { class: "card", "aria-labelledby": "keys-title" }, h("h2", { id: "keys-title" }, "Keys"), status, list),
    );

    function keyRow(k) {
      return h(
        "tr",
        { dataset: { keyId: k.id }, class: k.revoked_at ? "revoked" : "" },
        h("td", {}, k.name),
        h("td", { dataset: { label: "ID" } }, h("code", {}, k.id)),
        h("td", { dataset: { label: "Created" } }, fmt.dateTime(k.created_at)),
        h("td", {}, k.revoked_at ? h("span", { class: "badge bad" }, `revoked ${fmt.dateTime(k.revoked_at)}`) : h("span", { class: "badge ok" }, "active")),
        h(
          "td",
          {},
          k.revoked_at
            ? null
            : confirmButton("Revoke", "Confirm revoke", async () => {
                try {
                  await call("revoke_api_key", { id: k.id });
                  status.show(`Revoked ${k.name}. Requests with it now get 401.`, "ok");
                } catch (error) {
                  status.show(error.message, "error");
                }
                await load();
              }, { "aria-label": `Revoke key ${k.name}` }),
        ),
      );
    }

    async function load() {
      try {
        const keys = await call("list_api_keys");
        if (!ctx.alive) return;
        fill(
          list,
          keys.length
            ? h(
                "div",
                { class: "table-wrap stack" },
                h(
                  "table",
                  { id: "keys" },
                  h("caption", { class: "visually-hidden" }, "API keys, oldest first"),
                  h("thead", {}, h("tr", {}, ["Name", "ID", "Created", "State", h("span", { class: "visually-hidden" }, "Actions")].map((c) => h("th", { scope: "col" }, c)))),
                  h("tbody", {}, keys.map(keyRow)),
                ),
              )
            : h("p", { class: "empty" }, "No keys yet."),
        );
      } catch (error) {
        if (ctx.alive) fill(list, h("p", { class: "error" }, error.message));
      }
    }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      nameField.setError("");
      if (!name.value.trim()) {
        nameField.setError("Give the key a name.");
        name.focus();
        return;
      }
      try {
        const created = await call("create_api_key", { name: name.value.trim() });
        name.value = "";
        fill(
          secret,
          h("p", {}, h("strong", {}, `Key "${created.info.name}" created. Copy it now: it is shown only this once.`)),
          h("p", {}, h("code", { class: "id", id: "new-key-value" }, created.key), " ", copyButton(() => created.key, "Copy", "the new key")),
          h("p", { class: "hint" }, "Send it as Authorization: Bearer <key> (or x-api-key)."),
        );
        secret.hidden = false;
        await load();
      } catch (error) {
        if (error.code === INVALID_PARAMS) nameField.setError(error.message);
        else status.show(error.message, "error");
      }
    });

    load();
  },
};
