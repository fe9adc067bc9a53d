// Setup, the first-run wizard: find the engines on this machine (discover_providers
// tries each local engine's default address, plus any address given here) and add
// the ones found (add_provider); then show this node's ID and how to pair with peers.

import { copyButton, fill, h } from "../lib/dom.js";
import { field } from "../lib/form.js";
import { call } from "../lib/rpc.js";

/** A provider name that is not taken yet: the kind, or "engine-PORT" for a generic one. */
function suggestName(found, taken) {
  let base = found.kind;
  if (found.kind === "openai_compatible") {
    const port = new URL(found.base_url).port;
    base = port ? `engine-${port}` : "engine";
  }
  let name = base;
  for (let i = 2; taken.has(name); i++) name = `${base}-${i}`;
  return name;
}

let lastUrls = ""; // the addresses typed, kept while the app is open (searched again on return)

export default {
  title: "Setup",
  render(main, ctx) {
    const urls = h("textarea", { name: "urls", rows: 2, spellcheck: "false", placeholder: "http://127.0.0.1:8080" });
    urls.value = lastUrls;
    const urlsField = field({
      label: "Other addresses to try",
      input: urls,
      hint: "Optional, one per line. The usual local addresses of Ollama, LM Studio, llama.cpp and vLLM are always tried.",
    });
    const search = h("form", { class: "inline-form", novalidate: true }, urlsField, h("div", { class: "actions" }, h("button", { type: "submit" }, "Search")));
    const results = h("div", { id: "discovered", "aria-live": "polite" });
    const node = h("div", { id: "setup-node" }, "Loading…");
    main.append(
      h("h1", {}, "Setup"),
      h("p", {}, "Three steps to a working Gate: add the engines running here, pair with other nodes if you like, and point your tools at it."),
      h(
        "section",
        { class: "card", "aria-labelledby": "step-engines" },
        h("h2", { id: "step-engines" }, "1. Engines on this machine"),
        search,
        results,
      ),
      h("section", { class: "card", "aria-labelledby": "step-peers" }, h("h2", { id: "step-peers" }, "2. Pair with another node (optional)"), node),
      h(
        "section",
        { class: "card", "aria-labelledby": "step-use" },
        h("h2", { id: "step-use" }, "3. Use it"),
        h("p", {}, "Point OpenAI- or Anthropic-compatible tools at this address:"),
        h("pre", { class: "command" }, h("code", {}, `${location.origin}/v1`)),
        h("p", {}, "To require keys from those tools, create them on the ", h("a", { href: "#/keys" }, "API keys"), " page and turn on security.require_api_keys in ", h("a", { href: "#/config" }, "Config"), "."),
      ),
    );

    const taken = new Set();

    function item(found) {
      const children = [
        h("h3", {}, h("code", {}, found.base_url)),
        h("p", {}, h("span", { class: "badge ok" }, "found"), " ", found.kind),
        h("p", { class: "models" }, found.models.length ? `Models: ${found.models.join(", ")}` : "No models loaded."),
      ];
      if (found.configured) {
        children.push(h("p", {}, h("span", { class: "badge ok" }, "already added")));
      } else {
        const name = h("input", { name: "name", value: suggestName(found, taken), autocomplete: "off", spellcheck: "false" });
        taken.add(name.value);
        const nameField = field({ label: "Name", input: name });
        const add = h("form", { class: "inline-form", novalidate: true }, nameField, h("div", { class: "actions" }, h("button", { type: "submit" }, "Add")));
        add.addEventListener("submit", async (event) => {
          event.preventDefault();
          nameField.setError("");
          try {
            const provider = await call("add_provider", { name: name.value.trim(), kind: found.kind, base_url: found.base_url });
            taken.add(provider.name);
            add.replaceWith(h("p", {}, h("span", { class: "badge ok" }, "added"), ` as ${provider.name}: ${provider.healthy ? "healthy" : "not answering yet"}, ${provider.models.length} model(s).`));
          } catch (error) {
            nameField.setError(error.message);
          }
        });
        children.push(add);
      }
      return h("li", { class: "card", dataset: { baseUrl: found.base_url } }, children);
    }

    async function discover(event) {
      event?.preventDefault();
      urlsField.setError("");
      lastUrls = urls.value;
      const extra = urls.value.split(/\s+/).filter(Boolean);
      fill(results, h("p", {}, "Looking for engines…"));
      try {
        const [found, providers] = await Promise.all([call("discover_providers", { urls: extra }), call("list_providers")]);
        if (!ctx.alive) return;
        for (const p of providers) taken.add(p.name);
        const answered = found.filter((f) => f.found);
        const silent = found.filter((f) => !f.found);
        fill(
          results,
          h("p", {}, answered.length ? `Found ${answered.length} engine(s).` : "No engine answered. Start one (e.g. Ollama) and search again, or give its address above."),
          providers.length
            ? h("p", {}, `This node already uses: ${providers.map((p) => p.name).join(", ")} (see `, h("a", { href: "#/providers" }, "Providers"), ").")
            : null,
          answered.length ? h("ul", { class: "found-list" }, answered.map(item)) : null,
          silent.length
            ? h(
                "details",
                { class: "not-found" },
                h("summary", {}, `${silent.length} address(es) did not answer`),
                h("ul", {}, silent.map((f) => h("li", { dataset: { baseUrl: f.base_url } }, `${f.kind} at ${f.base_url}: ${f.error ?? "no answer"}`))),
              )
            : null,
        );
      } catch (error) {
        if (!ctx.alive) return;
        fill(results);
        urlsField.setError(error.message);
      }
    }

    async function showNode() {
      try {
        const status = await call("node_status");
        if (!ctx.alive) return;
        fill(
          node,
          h("p", {}, "This node's ID (give it to the other node's owner):"),
          h("p", {}, h("code", { class: "id", id: "setup-node-id" }, status.node_id), " ", copyButton(() => status.node_id, "Copy ID")),
          h("p", {}, "On the other machine, run:"),
          h("pre", { class: "command" }, h("code", { id: "setup-peer-command" }, `gate peers add ${status.node_id}`)),
          status.p2p_address
            ? [
                h("p", {}, "If it cannot find this node by its ID alone (relays and discovery off), give the address too:"),
                h("pre", { class: "command" }, h("code", {}, `gate peers add ${status.p2p_address}`)),
              ]
            : null,
          h("p", {}, "Then add the other node's ID here on the ", h("a", { href: "#/peers" }, "Peers"), " page (or run gate peers add with its ID on this machine). Both sides must trust each other."),
        );
      } catch (error) {
        if (ctx.alive) fill(node, h("p", { class: "error" }, error.message));
      }
    }

    search.addEventListener("submit", discover);
    discover();
    showNode();
  },
};
