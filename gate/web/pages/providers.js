// Providers: each engine this node routes to, with its health, models and load, and a
// button that checks it now (test_provider) instead of at the next health check.

import { fill, h, hasFocus, notice } from "../lib/dom.js";
import * as fmt from "../lib/format.js";
import { call } from "../lib/rpc.js";

export default {
  title: "Providers",
  render(main, ctx) {
    const list = h("div", { id: "provider-list", class: "cards" }, h("p", {}, "Loading…"));
    const status = notice();
    main.append(
      h("h1", {}, "Providers"),
      h("p", {}, "The engines this node sends requests to. To add engines running on this machine, use ", h("a", { href: "#/setup" }, "Setup"), "."),
      status,
      list,
    );

    function card(p) {
      const test = h("button", { type: "button", "aria-label": `Test ${p.name}` }, "Test");
      test.addEventListener("click", async () => {
        test.disabled = true;
        status.show(`Testing ${p.name}…`);
        try {
          const checked = await call("test_provider", { name: p.name });
          status.show(
            checked.healthy
              ? `${p.name} is healthy: ${checked.models.length} model(s).`
              : `${p.name} is not healthy: ${checked.last_error ?? "no answer"}`,
            checked.healthy ? "ok" : "error",
          );
        } catch (error) {
          status.show(error.message, "error");
        }
        test.disabled = false;
        await load();
      });
      const limit = p.max_concurrency ? String(p.max_concurrency) : "no limit";
      return h(
        "article",
        { class: "card provider", dataset: { name: p.name }, "aria-labelledby": `provider-${p.name}` },
        h(
          "header",
          {},
          h("h2", { id: `provider-${p.name}` }, p.name),
          h("span", { class: `badge ${p.healthy ? "ok" : "bad"}` }, p.healthy ? "healthy" : "unhealthy"),
        ),
        h(
          "dl",
          { class: "facts" },
          h("div", {}, h("dt", {}, "Kind"), h("dd", {}, p.kind)),
          h("div", {}, h("dt", {}, "Address"), h("dd", {}, h("code", {}, p.base_url || "the vendor's API"))),
          h("div", {}, h("dt", {}, "Models"), h("dd", { class: "models" }, p.models.length ? p.models.join(", ") : "none reported")),
          h("div", {}, h("dt", {}, "In flight"), h("dd", {}, `${p.in_flight} (limit: ${limit})`)),
          h("div", {}, h("dt", {}, "Last check"), h("dd", {}, p.last_check ? fmt.ago(p.last_check * 1000) : "not yet")),
          p.last_error ? h("div", {}, h("dt", {}, "Last error"), h("dd", { class: "error" }, p.last_error)) : null,
        ),
        h("div", { class: "actions" }, test),
      );
    }

    async function load() {
      try {
        const providers = await call("list_providers");
        if (!ctx.alive) return;
        // Redrawing replaces the buttons: give the focus back to the one that had it.
        const focused = hasFocus(list) ? document.activeElement.getAttribute("aria-label") : null;
        fill(list, providers.length ? providers.map(card) : h("p", { class: "empty" }, "No providers yet. ", h("a", { href: "#/setup" }, "Find engines on this machine"), "."));
        if (focused) list.querySelector(`[aria-label="${CSS.escape(focused)}"]`)?.focus();
      } catch (error) {
        if (ctx.alive) fill(list, h("p", { class: "error" }, error.message));
      }
    }

    load();
    ctx.every(5000, () => hasFocus(list) || load());
  },
};
