// Dashboard: this node's status, charts of output tokens/s and latency, and the
// recent requests, all updated live from the event stream.

import { lineChart } from "../lib/chart.js";
import { copyButton, fill, h } from "../lib/dom.js";
import * as fmt from "../lib/format.js";
import * as requests from "../lib/requests.js";
import { call } from "../lib/rpc.js";

const COLUMNS = ["Time", "Model", "Served by", "Client", "Status", "Latency", "TTFT", "Tokens in / out"];

export default {
  title: "Dashboard",
  render(main, ctx) {
    const facts = h("dl", { class: "facts", id: "node-status" }, h("div", {}, h("dt", {}, "Status"), h("dd", {}, "Loading…")));
    const tokens = lineChart({ title: "Output tokens/s", unit: "tok/s", windowS: requests.WINDOW_S });
    const latency = lineChart({
      title: "Latency, mean",
      unit: "ms",
      windowS: requests.WINDOW_S,
      format: (v) => String(Math.round(v)),
    });
    tokens.el.id = "chart-tokens";
    latency.el.id = "chart-latency";
    const tbody = h("tbody");
    const empty = h("p", { class: "empty" }, "No requests yet: they appear here as they happen.");
    const table = h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { id: "requests" },
        h("caption", { class: "visually-hidden" }, "Recent requests, newest first"),
        h("thead", {}, h("tr", {}, COLUMNS.map((c) => h("th", { scope: "col" }, c)))),
        tbody,
      ),
    );
    main.append(
      h("h1", {}, "Dashboard"),
      h("section", { class: "card", "aria-labelledby": "node-title" }, h("h2", { id: "node-title" }, "This node"), facts),
      h("section", { class: "charts", "aria-label": "Charts, last five minutes" }, tokens.el, latency.el),
      h(
        "section",
        { class: "card", "aria-labelledby": "requests-title" },
        h("h2", { id: "requests-title" }, "Recent requests"),
        empty,
        table,
      ),
    );

    const wide = (el) => {
      el.classList.add("wide");
      return el;
    };

    function services(all) {
      const entries = Object.entries(all);
      const notRunning = entries.filter(([, st]) => st.state !== "running");
      const running = `${entries.length - notRunning.length} of ${entries.length} running`;
      if (!notRunning.length) return running;
      return `${running}; ${notRunning.map(([name, st]) => `${name} ${st.state}${st.last_error ? ` (${st.last_error})` : ""}`).join(", ")}`;
    }

    // The name's certificate from the ACME CA (absent with certificate files of one's own).
    function certificate(r) {
      const good = r.certificate === "valid" && !r.certificate_error;
      return h(
        "div",
        { class: "certificate" },
        "Certificate ",
        h("span", { class: `badge ${good ? "ok" : r.certificate_error ? "bad" : ""}` }, r.certificate),
        r.certificate_expires ? ` expires ${r.certificate_expires.slice(0, 10)}` : "",
        r.certificate_error ? ` — last attempt failed: ${r.certificate_error}` : "",
      );
    }

    // One fact per relay: its state (why, if it failed) and this node's public URL there.
    function relay(r) {
      const state = h("span", { class: `badge ${r.state === "registered" ? "ok" : r.state === "failed" ? "bad" : ""}` }, r.state);
      return wide(
        h(
          "div",
          { class: "relay", dataset: { relay: r.relay_id } },
          h("dt", {}, `Relay ${r.relay_id.slice(0, 8)}…`),
          h(
            "dd",
            {},
            state,
            r.reason ? ` ${r.reason}` : "",
            r.url ? [" ", h("code", { class: "url" }, r.url), " ", copyButton(() => r.url, "Copy", "public URL")] : "",
            r.certificate ? certificate(r) : "",
          ),
        ),
      );
    }

    function showStatus(s) {
      const providers = Object.entries(s.providers);
      const peers = Object.values(s.peers);
      const fact = (term, ...value) => h("div", {}, h("dt", {}, term), h("dd", {}, ...value));
      fill(
        facts,
        wide(fact("Node ID", h("code", { class: "id" }, s.node_id), " ", copyButton(() => s.node_id, "Copy", "node ID"))),
        fact("Version", s.version),
        fact("Uptime", fmt.duration(s.uptime_s)),
        fact("Requests in flight", String(s.in_flight)),
        fact(
          "Providers",
          providers.length
            ? `${providers.filter(([, ok]) => ok).length} of ${providers.length} healthy`
            : h("a", { href: "#/setup" }, "none yet: add one"),
        ),
        fact("Peers", `${peers.filter((p) => p === "connected").length} of ${peers.length} connected`),
        fact("Services", services(s.services)),
        ...(s.relays ?? []).map(relay),
      );
    }

    async function loadStatus() {
      try {
        const status = await call("node_status");
        if (ctx.alive) showStatus(status);
      } catch (error) {
        if (ctx.alive) fill(facts, h("p", { class: "error" }, `Cannot reach the node: ${error.message}`));
      }
    }

    function row(r) {
      const ok = r.status >= 200 && r.status < 400;
      const servedBy = r.provider ?? (r.peer ? `peer ${r.peer.slice(0, 8)}…` : "–");
      return h(
        "tr",
        { dataset: { id: r.id ?? "" }, class: r.pending ? "pending" : "" },
        h("td", {}, fmt.time(r.ts)),
        h("td", { class: "model" }, r.model ?? "–"),
        h("td", {}, servedBy),
        // The door, when not this machine's listener: a peer's stream, a relay, tls.listen.
        h("td", {}, r.door && r.door !== "local" ? `${r.client ?? "–"} (${r.door})` : r.client ?? "–"),
        h(
          "td",
          { class: "status" },
          r.pending ? h("span", { class: "badge" }, "running") : h("span", { class: `badge ${ok ? "ok" : "bad"}`, title: r.error ?? "" }, String(r.status)),
        ),
        h("td", { class: "num" }, r.pending ? "–" : fmt.ms(r.latency_ms)),
        h("td", { class: "num" }, r.pending ? "–" : fmt.ms(r.ttft_ms)),
        h("td", { class: "num" }, r.pending ? "–" : `${r.tokens_in ?? "–"} / ${r.tokens_out ?? "–"}`),
      );
    }

    function showRequests() {
      fill(tbody, requests.rows.map(row));
      empty.hidden = requests.rows.length > 0;
      table.hidden = requests.rows.length === 0;
      const { tokensPerS, latencyMs } = requests.series();
      tokens.update(tokensPerS);
      latency.update(latencyMs);
    }

    let pending = 0;
    const loadStatusSoon = () => {
      // one node_status call a second at most, however many events arrive
      pending ||= setTimeout(() => {
        pending = 0;
        if (ctx.alive) loadStatus();
      }, 1000);
    };

    showRequests();
    loadStatus();
    ctx.on("hello", showStatus);
    ctx.on("peer", loadStatusSoon);
    ctx.on("request.start", loadStatusSoon);
    ctx.on("request.end", loadStatusSoon);
    ctx.every(5000, loadStatus);
    ctx.every(5000, showRequests); // the charts' window slides even when nothing happens
    ctx.cleanup(requests.watch(showRequests));
  },
};
