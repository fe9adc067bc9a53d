// A time-series line chart in inline SVG: no library, it scales with its box, and the
// latest figure is also written as text beside the title, for people and screen readers.

import { h, svg } from "./dom.js";

const W = 300; // viewBox units; the SVG stretches to its box (non-scaling strokes)
const H = 100;

/**
 * lineChart({title, unit, windowS, format}) -> {el, update(points)}
 * points: [{t: seconds since the epoch, v: number}], oldest first.
 */
export function lineChart({ title, unit, windowS, format = (v) => v.toFixed(1) }) {
  const area = svg("path", { class: "chart-area" });
  const line = svg("polyline", { class: "chart-line", "vector-effect": "non-scaling-stroke" });
  // A dot per point (a zero-length round-capped stroke stays round when the SVG is
  // stretched), so a single point is visible too.
  const dots = svg("path", { class: "chart-dots", "vector-effect": "non-scaling-stroke" });
  const grid = [0.25, 0.5, 0.75].map((f) =>
    svg("line", { class: "chart-grid", x1: 0, x2: W, y1: H * f, y2: H * f, "vector-effect": "non-scaling-stroke" }),
  );
  const plot = svg(
    "svg",
    { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", "aria-hidden": "true", focusable: "false" },
    grid,
    area,
    line,
    dots,
  );
  const latest = h("span", { class: "chart-latest" }, "–");
  const max = h("span", { class: "chart-max" });
  const el = h(
    "figure",
    { class: "chart" },
    h("figcaption", {}, h("span", { class: "chart-title" }, title), latest),
    h("div", { class: "chart-plot" }, max, plot),
    h("div", { class: "chart-axis", "aria-hidden": "true" }, h("span", {}, `${windowS / 60} min ago`), h("span", {}, "now")),
  );

  function update(points) {
    const now = Date.now() / 1000;
    const shown = points.filter((p) => p.t >= now - windowS);
    el.dataset.points = String(shown.length);
    const top = Math.max(...shown.map((p) => p.v), 0);
    latest.textContent = shown.length ? `${format(shown.at(-1).v)} ${unit}` : `no data`;
    max.textContent = top > 0 ? `${format(top)} ${unit}` : "";
    const scale = top > 0 ? (H * 0.9) / top : 0;
    const xy = shown.map((p) => [((p.t - (now - windowS)) / windowS) * W, H - p.v * scale]);
    line.setAttribute("points", xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "));
    const marked = xy.filter((_, i) => shown[i].v > 0); // a run of zeros is just the baseline
    dots.setAttribute("d", marked.map(([x, y]) => `M${x.toFixed(1)},${y.toFixed(1)}h0`).join(""));
    area.setAttribute(
      "d",
      xy.length ? `M${xy[0][0]},${H} ` + xy.map(([x, y]) => `L${x},${y}`).join(" ") + ` L${xy.at(-1)[0]},${H} Z` : "",
    );
  }

  update([]);
  return { el, update };
}
