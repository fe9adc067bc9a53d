// Live events from GET /rpc/events (server-sent events), shared by every page: one
// connection for the app, and pages subscribe by event kind with on(kind, fn).
// Besides the node's kinds there is "connection" ({state}) for the status badge.

import { call } from "./rpc.js";
import { getToken, onTokenWanted, tokenPending } from "./token.js";

const KINDS = ["hello", "node", "request.start", "request.end", "peer", "log", "dropped"];
const listeners = new Map();
let source = null;
let retryMs = 1000;
export let state = "connecting";

/** Call fn(data) for each event of `kind`; returns the function that stops it. */
export function on(kind, fn) {
  if (!listeners.has(kind)) listeners.set(kind, new Set());
  listeners.get(kind).add(fn);
  return () => listeners.get(kind).delete(fn);
}

function emit(kind, data) {
  for (const fn of listeners.get(kind) ?? []) {
    try {
      fn(data);
    } catch (error) {
      console.error(`while handling a ${kind} event:`, error); // one bad handler, not all
    }
  }
}

function setState(next) {
  state = next;
  emit("connection", { state });
}

// A node that refuses us for want of the token is not offline: it waits for the token.
onTokenWanted(() => setState("token"));

export function connect() {
  // EventSource cannot send headers: the token goes in the query, and the node takes
  // it there for this one path only.
  const token = getToken();
  source = new EventSource(token ? `/rpc/events?token=${encodeURIComponent(token)}` : "/rpc/events");
  source.addEventListener("open", () => {
    retryMs = 1000;
    setState("live");
  });
  for (const kind of KINDS) {
    source.addEventListener(kind, (event) => emit(kind, JSON.parse(event.data)));
  }
  source.addEventListener("node", (event) => {
    if (JSON.parse(event.data).state === "stopping") setState("stopping");
  });
  source.addEventListener("error", () => {
    if (source.readyState !== EventSource.CLOSED) {
      setState("reconnecting"); // the browser retries by itself
      return;
    }
    // Refused (e.g. 401) or unreachable: the browser gave up, so retry here, after an
    // RPC call that asks for the token if that was the reason.
    source = null;
    setState(tokenPending() ? "token" : "offline");
    setTimeout(reconnect, retryMs);
    retryMs = Math.min(retryMs * 2, 15000);
  });
}

async function reconnect() {
  try {
    await call("node_status");
  } catch {
    // still down: connect() fails again and schedules the next try
  }
  connect();
}
