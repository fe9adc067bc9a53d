// Logs: the node's recent log records (get_logs) and new ones as they happen (`log`
// events), filtered by level. The node sends live records at info and above.

import { fill, h } from "../lib/dom.js";
import { field } from "../lib/form.js";
import { call } from "../lib/rpc.js";

const LEVELS = ["debug", "info", "warning", "error", "critical"];
const KEEP = 500; // rows on screen; older ones stay in the log file

export default {
  title: "Logs",
  render(main, ctx) {
    const select = h("select", { name: "level" }, LEVELS.map((l) => h("option", { value: l, selected: l === "info" }, l)));
    const tbody = h("tbody");
    const empty = h("p", { class: "empty", hidden: true }, "No records at this level yet.");
    const follow = h("input", { type: "checkbox", name: "follow", checked: true });
    main.append(
      h("h1", {}, "Logs"),
      h(
        "div",
        { class: "toolbar" },
        field({ label: "Lowest level shown", input: select }),
        field({ label: "Show new records as they come", input: follow }),
      ),
      empty,
      h(
        "div",
        { class: "table-wrap logs" },
        h(
          "table",
          { id: "log-table" },
          h("caption", { class: "visually-hidden" }, "Log records, newest first"),
          h("thead", {}, h("tr", {}, ["Time", "Level", "Logger", "Message"].map((c) => h("th", { scope: "col" }, c)))),
          tbody,
        ),
      ),
    );

    const atLeast = (level) => LEVELS.indexOf(level) >= LEVELS.indexOf(select.value);

    function row(r) {
      const extra = Object.entries(r)
        .filter(([k]) => !["ts", "level", "logger", "msg", "exc"].includes(k))
        .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)
        .join(" ");
      const when = r.ts ? new Date(r.ts) : new Date();
      return h(
        "tr",
        { class: `level-${r.level}`, dataset: { level: r.level } },
        h("td", {}, h("time", { datetime: when.toISOString() }, when.toLocaleTimeString([], { hour12: false }))),
        h("td", {}, h("span", { class: `badge level-${r.level}` }, r.level)),
        h("td", {}, r.logger),
        h("td", { class: "message" }, r.msg, extra ? h("span", { class: "extra" }, ` ${extra}`) : null),
      );
    }

    async function load() {
      try {
        const records = await call("get_logs", { level: select.value, limit: 200 });
        if (!ctx.alive) return;
        fill(tbody, records.reverse().map(row));
        empty.hidden = records.length > 0;
      } catch (error) {
        if (ctx.alive) fill(tbody, h("tr", {}, h("td", { colspan: 4, class: "error" }, error.message)));
      }
    }

    select.addEventListener("change", load);
    ctx.on("log", (record) => {
      if (!follow.checked || !atLeast(record.level)) return;
      tbody.prepend(row(record));
      empty.hidden = true;
      while (tbody.rows.length > KEEP) tbody.lastElementChild.remove();
    });
    load();
  },
};
