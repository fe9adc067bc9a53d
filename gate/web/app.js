// Gate's web UI. A hash router (#/peers) over one module per page, so the server only
// serves files. A page module exports {title, render(main, ctx)}; the ctx it gets
// (ctx.on for events, ctx.every for timers, ctx.cleanup for anything else, ctx.alive)
// is torn down when another page is shown, so a page never writes into a view that is
// gone.

import * as events from "./lib/events.js";
import * as requests from "./lib/requests.js";
import { call } from "./lib/rpc.js";
import config from "./pages/config.js";
import dashboard from "./pages/dashboard.js";
import keys from "./pages/keys.js";
import logs from "./pages/logs.js";
import peers from "./pages/peers.js";
import providers from "./pages/providers.js";
import setup from "./pages/setup.js";

const PAGES = { "": dashboard, peers, providers, config, logs, keys, setup };
const CONNECTION_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  offline: "Offline",
  token: "Waiting for the control token",
  stopping: "Node stopping",
};

let teardown = () => {};

function pageContext() {
  const stops = [];
  const ctx = {
    alive: true,
    on(kind, fn) {
      stops.push(events.on(kind, fn));
    },
    every(ms, fn) {
      const timer = setInterval(fn, ms);
      stops.push(() => clearInterval(timer));
    },
    cleanup(fn) {
      stops.push(fn);
    },
  };
  teardown = () => {
    ctx.alive = false;
    for (const stop of stops) stop();
  };
  return ctx;
}

function show({ focus }) {
  const name = location.hash.replace(/^#\/?/, "");
  const page = PAGES[name];
  teardown();
  const main = document.getElementById("main");
  main.replaceChildren();
  for (const link of document.querySelectorAll("nav.pages a")) {
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!page) {
    document.title = "Not found · Gate";
    main.append(Object.assign(document.createElement("h1"), { textContent: "No such page" }));
    return;
  }
  document.title = `${page.title} · Gate`;
  page.render(main, pageContext());
  if (focus) main.focus({ preventScroll: true }); // so a screen reader starts at the new page
}

function showConnection({ state }) {
  const badge = document.getElementById("connection");
  badge.dataset.state = state;
  badge.textContent = CONNECTION_TEXT[state] ?? state;
}

async function firstRun() {
  // A node with no engine yet opens on the Setup page (only when no page was asked for).
  if (location.hash) return;
  try {
    // replace(): Back should not return to a Dashboard the user never asked for
    if ((await call("list_providers")).length === 0 && !location.hash) location.replace("#/setup");
  } catch {
    // the Dashboard says what is wrong
  }
}

events.on("connection", showConnection);
requests.start();
events.connect();
window.addEventListener("hashchange", () => show({ focus: true }));
show({ focus: false });
firstRun();
