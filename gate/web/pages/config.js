// Config: the node's configuration (get_config, secrets masked) as a form, one
// fieldset per section. Saving sends only the changed keys to update_config, which
// validates the whole file before writing it; its error names the key
// ("p2p.port: Expected int <= 65535"), and the message is shown beside that field.

import { fill, h, notice } from "../lib/dom.js";
import { field } from "../lib/form.js";
import { call, INVALID_PARAMS } from "../lib/rpc.js";

const MASK = "***"; // get_config's stand-in for a secret that is set
const CHOICES = {
  "server.log_level": ["debug", "info", "warning", "error"],
  "p2p.iroh_relay_mode": ["default", "disabled", "custom"],
};
const SECRETS = new Set(["security.control_token", "tls.acme_eab_hmac_key"]);
const PLACEHOLDERS = {
  "server.data_dir": "the platform's data directory",
  "database.url": "gate.db in the data directory",
  "relay.domain": "none",
  "tls.cert_file": "a certificate from the ACME CA",
  "tls.key_file": "a certificate from the ACME CA",
  "tls.acme_email": "none",
  "tls.acme_ca_bundle": "the system's roots",
  "tls.acme_eab_kid": "none (the CA needs no binding)",
};
const ABOUT = {
  server: "The HTTP API: where it listens, its limits and timeouts.",
  p2p: "Peer-to-peer: the QUIC endpoint, iroh's relays and what trusted peers may ask.",
  providers: "Engines are added and tested on the Providers and Setup pages.",
  relay: "Gate relays this node registers with, for public HTTPS (not iroh's relays, which are under p2p).",
  tls: "The certificate the relay door presents; empty: one from the ACME CA (Let's Encrypt by default) for each relay name, self-signed until it comes.",
  security: "API keys and the control token.",
  web: "This web UI.",
  database: "Where requests are recorded.",
};

/** An input for one value, with read() giving back a value of the same shape. */
function control(key, value) {
  if (CHOICES[key]) {
    const select = h("select", { name: key }, CHOICES[key].map((c) => h("option", { value: c, selected: c === value }, c)));
    return { input: select, read: () => select.value };
  }
  if (typeof value === "boolean") {
    const input = h("input", { type: "checkbox", name: key, checked: value });
    return { input, read: () => input.checked };
  }
  if (typeof value === "number") {
    const input = h("input", { type: "number", name: key, step: "any", value, inputmode: "decimal" });
    // An empty or malformed number is sent as null: the node's validation says why.
    return { input, read: () => (input.value.trim() === "" ? null : Number(input.value)) };
  }
  if (Array.isArray(value)) {
    const input = h("textarea", { name: key, rows: 3, spellcheck: "false" });
    input.value = value.join("\n");
    const read = () => input.value.split("\n").map((s) => s.trim()).filter(Boolean);
    return { input, read, hint: "One per line." };
  }
  if (value !== null && typeof value === "object") {
    const input = h("textarea", { name: key, rows: 3, spellcheck: "false" });
    input.value = Object.entries(value).map(([k, v]) => `${k} = ${v}`).join("\n");
    const read = () =>
      Object.fromEntries(
        input.value
          .split("\n")
          .filter((line) => line.includes("="))
          .map((line) => line.split("=", 2).map((s) => s.trim())),
      );
    return { input, read, hint: "One per line: name = target." };
  }
  if (value === MASK || SECRETS.has(key)) {
    // The secret itself never reaches the browser; typing a new one replaces it.
    const set = value === MASK;
    const placeholder = set ? "set (hidden): type to replace" : "not set";
    const input = h("input", { type: "password", name: key, autocomplete: "new-password", placeholder });
    return { input, read: () => input.value || value };
  }
  const input = h("input", { type: "text", name: key, value: value ?? "", spellcheck: "false", autocomplete: "off", placeholder: PLACEHOLDERS[key] });
  return { input, read: () => input.value };
}

/** The field an error is about: the longest form key that the message names. */
export function keyInMessage(message, keys) {
  const named = keys.filter((key) => {
    const at = message.indexOf(key);
    return at >= 0 && /^($|[:[\s'"])/.test(message.slice(at + key.length)) && (at === 0 || /[\s'"]/.test(message[at - 1]));
  });
  return named.sort((a, b) => b.length - a.length)[0] ?? null;
}

export default {
  title: "Config",
  render(main, ctx) {
    const form = h("form", { id: "config-form", novalidate: true }, h("p", {}, "Loading…"));
    const status = notice();
    // Shown once a saved change waits for a restart; the node restarts itself (same
    // process), and the page tells when it is back (its event stream says hello again).
    const restart = h("button", { type: "button", class: "secondary", hidden: true }, "Restart Gate now");
    let restarting = false;
    restart.addEventListener("click", async () => {
      restart.disabled = true;
      restarting = true;
      status.show("Restarting… this page reconnects when Gate is back.");
      try {
        await call("node_restart");
      } catch (error) {
        restarting = false;
        restart.disabled = false;
        status.show(`Restart failed: ${error.message}`, "error");
      }
    });
    ctx.on("hello", () => {
      if (!restarting) return;
      restarting = false;
      restart.hidden = true;
      restart.disabled = false;
      status.show("Gate restarted: every saved setting is in effect.", "ok");
    });
    main.append(
      h("h1", {}, "Config"),
      h("p", {}, "Changes are written to gate.toml. Most apply at once; a few (such as addresses and ports) need a restart, and the page says which."),
      form,
    );
    const fields = new Map(); // "section.key" -> {wrap, read, original}

    function build(config) {
      fields.clear();
      const sets = [];
      for (const [section, values] of Object.entries(config)) {
        const inputs = [];
        for (const [name, value] of Object.entries(values)) {
          const key = `${section}.${name}`;
          if (key === "providers.engines") {
            inputs.push(
              h("p", { class: "hint" }, `Engines: ${value.map((e) => e.name).join(", ") || "none"} (see `, h("a", { href: "#/providers" }, "Providers"), ")."),
            );
            continue;
          }
          const { input, read, hint } = control(key, value);
          const label = name[0].toUpperCase() + name.slice(1).replaceAll("_", " ");
          const wrap = field({ label, input, hint: hint ? `${key}. ${hint}` : key });
          fields.set(key, { wrap, read, original: JSON.stringify(read()) });
          inputs.push(wrap);
        }
        sets.push(
          h("fieldset", { class: "card", id: `section-${section}` }, h("legend", {}, section), ABOUT[section] ? h("p", { class: "hint" }, ABOUT[section]) : null, inputs),
        );
      }
      fill(form, sets, status, h("div", { class: "actions" }, h("button", { type: "submit" }, "Save changes"), restart));
    }

    async function save(event) {
      event.preventDefault();
      status.show("");
      const set = {};
      for (const [key, f] of fields) {
        f.wrap.setError("");
        const now = f.read();
        if (JSON.stringify(now) !== f.original) set[key] = now;
      }
      if (!Object.keys(set).length) {
        status.show("Nothing changed.");
        return;
      }
      try {
        const result = await call("update_config", { set });
        for (const key of Object.keys(set)) fields.get(key).original = JSON.stringify(set[key]);
        const later = result.restart_required ?? [];
        status.show(
          later.length ? `Saved. These take effect after a restart of Gate: ${later.join(", ")}.` : "Saved; in effect now.",
          "ok",
        );
        status.dataset.restartRequired = later.join(" ");
        if (later.length) restart.hidden = false;
      } catch (error) {
        const key = error.code === INVALID_PARAMS ? keyInMessage(error.message, [...fields.keys()]) : null;
        if (key) {
          fields.get(key).wrap.setError(error.message.slice(error.message.indexOf(key)));
          fields.get(key).wrap.querySelector("input, select, textarea").focus();
          status.show("Not saved: see the field marked below.", "error");
        } else {
          status.show(`Not saved: ${error.message}`, "error");
        }
      }
    }

    form.addEventListener("submit", save);
    call("get_config").then(
      (config) => ctx.alive && build(config),
      (error) => ctx.alive && fill(form, h("p", { class: "error" }, error.message)),
    );
  },
};
