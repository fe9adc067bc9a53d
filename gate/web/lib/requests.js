// Recent requests, kept from the moment the app starts (not only while the Dashboard
// is open), from request.start / request.end events. The history from before the app
// connected comes from request_history once, at the first `hello`: records that ended
// before that moment; anything later arrives as an event, so nothing is counted twice.

import { on } from "./events.js";
import { call } from "./rpc.js";

export const WINDOW_S = 300; // the charts show the last five minutes
export const BUCKET_S = 10; // in ten-second steps
const MAX_ROWS = 50;

export const rows = []; // newest first; a live row has `id` and, until it ends, `pending`
const ended = []; // {ts, latency_ms, tokens_out} of requests that ended in the window
const watchers = new Set();
let seeded = false;

export function watch(fn) {
  watchers.add(fn);
  return () => watchers.delete(fn);
}

let scheduled = false;

function changed() {
  // At most once a frame: under load, many events arrive between two paints.
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    for (const fn of watchers) fn();
  });
}

function trim() {
  rows.splice(MAX_ROWS);
  const oldest = Date.now() / 1000 - WINDOW_S;
  while (ended.length && ended[0].ts < oldest) ended.shift();
}

export function start() {
  on("hello", async () => {
    if (seeded) return;
    seeded = true;
    const connectedAt = Date.now() / 1000;
    try {
      const history = await call("request_history", { limit: MAX_ROWS, since: connectedAt - WINDOW_S });
      const before = history.filter((r) => r.ts < connectedAt);
      rows.push(...before);
      ended.unshift(...before.map((r) => ({ ts: r.ts, latency_ms: r.latency_ms, tokens_out: r.tokens_out })).reverse());
      trim();
      changed();
    } catch (error) {
      console.warn("request history unavailable:", error.message);
    }
  });
  on("request.start", (event) => {
    rows.unshift({ ...event, ts: Date.now() / 1000, pending: true });
    trim();
    changed();
  });
  on("request.end", (event) => {
    const ts = Date.now() / 1000;
    const row = rows.find((r) => r.id === event.id);
    if (row) Object.assign(row, event, { pending: false });
    else rows.unshift({ ...event, ts });
    ended.push({ ts, latency_ms: event.latency_ms, tokens_out: event.tokens_out ?? 0 });
    trim();
    changed();
  });
}

/** Per ten-second bucket, oldest first: output tokens per second (zero where no request
 * ended) and the mean latency (only where some did). */
export function series() {
  const buckets = new Map();
  for (const r of ended) {
    const t = Math.floor(r.ts / BUCKET_S) * BUCKET_S;
    const b = buckets.get(t) ?? { tokens: 0, latency: 0, n: 0 };
    b.tokens += r.tokens_out ?? 0;
    b.latency += r.latency_ms ?? 0;
    b.n += 1;
    buckets.set(t, b);
  }
  const now = Date.now() / 1000;
  const last = Math.floor(now / BUCKET_S) * BUCKET_S;
  const tokensPerS = [];
  const latencyMs = [];
  for (let t = last - WINDOW_S + BUCKET_S; t <= last; t += BUCKET_S) {
    const b = buckets.get(t);
    const at = Math.min(t + BUCKET_S, now); // the bucket still filling is drawn at "now"
    tokensPerS.push({ t: at, v: b ? b.tokens / BUCKET_S : 0 });
    if (b) latencyMs.push({ t: at, v: b.latency / b.n });
  }
  return { tokensPerS, latencyMs };
}
