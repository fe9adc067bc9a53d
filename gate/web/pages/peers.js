// Peers: the trusted peers with their connection status, adding one (by node id, or
// node-id@host:port), removing one. Adding and removing edit gate.toml, which the
// node applies within a second; the list follows `peer` events and a short poll.

import { confirmButton, copyButton, fill, h, hasFocus, notice } from "../lib/dom.js";
import * as fmt from "../lib/format.js";
import { field } from "../lib/form.js";
import { call, INVALID_PARAMS } from "../lib/rpc.js";

function statusText(status) {
  if (!status) return "unknown";
  if (status.type === "failed") return `failed: ${status.reason}`;
  if (status.type === "connecting" && status.attempt > 1) return `connecting (attempt ${status.attempt})`;
  return status.type;
}

export default {
  title: "Peers",
  render(main, ctx) {
    const input = h("input", {
      name: "peer",
      autocomplete: "off",
      spellcheck: "false",
      required: true,
      placeholder: "node id, or node-id@host:port",
    });
    const peerField = field({
      label: "Peer's node ID",
      input,
      hint: "The other node shows its ID on its Setup page, or with gate status.",
    });
    const added = notice();
    const form = h(
      "form",
      { class: "inline-form", novalidate: true },
      peerField,
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Add peer")),
    );
    const list = h("div", { id: "peer-list" }, h("p", {}, "Loading…"));
    const listNotice = notice();
    const mine = h("div", { class: "own-id" }, "Loading…");
    main.append(
      h("h1", {}, "Peers"),
      h(
        "section",
        { class: "card", "aria-labelledby": "add-title" },
        h("h2", { id: "add-title" }, "Add a trusted peer"),
        h("p", {}, "A trusted peer may use this node's engines, and this node may use its engines."),
        form,
        added,
      ),
      h("section", { class: "card", "aria-labelledby": "list-title" }, h("h2", { id: "list-title" }, "Trusted peers"), listNotice, list),
      h("section", { class: "card", "aria-labelledby": "mine-title" }, h("h2", { id: "mine-title" }, "This node's ID"), mine),
    );

    function peerRow(p) {
      const models = (p.capabilities?.supported_models ?? []).map((m) => m.id);
      return h(
        "tr",
        { dataset: { nodeId: p.node_id } },
        h("td", { class: "wrap" }, h("code", { class: "id" }, p.node_id)),
        h("td", { dataset: { label: "Status" } }, h("span", { class: `badge ${p.status?.type === "connected" ? "ok" : p.status?.type === "failed" ? "bad" : ""}` }, statusText(p.status))),
        h("td", { dataset: { label: "Addresses" } }, p.addresses?.length ? p.addresses.join(", ") : "found by discovery"),
        h("td", { class: "wrap", dataset: { label: "Models" } }, models.length ? models.join(", ") : "–"),
        h("td", { dataset: { label: "Last seen" } }, fmt.ago(p.last_seen_ms)),
        h(
          "td",
          {},
          confirmButton("Remove", "Confirm removal", async () => {
            try {
              await call("remove_peer", { node_id: p.node_id });
              listNotice.show(`Removed ${p.node_id.slice(0, 12)}…`);
            } catch (error) {
              listNotice.show(error.message, "error");
            }
            await load();
          }, { "aria-label": `Remove peer ${p.node_id}` }),
        ),
      );
    }

    async function load() {
      let peers;
      try {
        peers = await call("list_peers");
      } catch (error) {
        if (ctx.alive) fill(list, h("p", { class: "error" }, error.message));
        return;
      }
      if (!ctx.alive) return;
      if (!peers.length) {
        fill(list, h("p", { class: "empty" }, "No trusted peers yet."));
        return;
      }
      fill(
        list,
        h(
          "div",
          { class: "table-wrap stack" },
          h(
            "table",
            { id: "peers" },
            h("caption", { class: "visually-hidden" }, "Trusted peers"),
            h("thead", {}, h("tr", {}, ["Node ID", "Status", "Addresses", "Models", "Last seen", h("span", { class: "visually-hidden" }, "Actions")].map((c) => h("th", { scope: "col" }, c)))),
            h("tbody", {}, peers.map(peerRow)),
          ),
        ),
      );
    }

    async function loadOwn() {
      try {
        const status = await call("node_status");
        if (!ctx.alive) return;
        fill(
          mine,
          h("p", {}, "Give this ID to the other node's owner. They add this node with:"),
          h("pre", { class: "command" }, h("code", { id: "own-add-command" }, `gate peers add ${status.node_id}`)),
          h("p", {}, h("code", { class: "id" }, status.node_id), " ", copyButton(() => status.node_id, "Copy ID")),
        );
      } catch (error) {
        if (ctx.alive) fill(mine, h("p", { class: "error" }, error.message));
      }
    }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      peerField.setError("");
      added.show("");
      const peer = input.value.trim();
      if (!peer) {
        peerField.setError("Enter the peer's node ID.");
        input.focus();
        return;
      }
      try {
        const result = await call("add_peer", { peer });
        input.value = "";
        added.show(`Trusted ${result.trusted}. Gate connects to it within a few seconds.`);
        for (const delay of [700, 1500, 3000]) setTimeout(() => ctx.alive && refresh(), delay);
      } catch (error) {
        if (error.code === INVALID_PARAMS) {
          peerField.setError(error.message);
          input.focus();
        } else added.show(error.message, "error");
      }
    });

    const refresh = () => hasFocus(list) || load();
    load();
    loadOwn();
    ctx.on("peer", refresh);
    ctx.every(5000, refresh);
  },
};
