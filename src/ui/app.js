// strait's status page. The page itself holds no data: this script asks the admin API
// (every 2 s) and draws what it answers. When the API answers 401 it asks for the admin
// token, keeps it in this tab's sessionStorage and sends it as `Authorization: Bearer`
// (never in a URL). Everything from the API is written with textContent, never as HTML.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "strait-admin-token";

class NeedToken extends Error {}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(text, cls) {
  return el("span", { class: "badge " + cls }, text);
}

async function api(path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) throw new NeedToken();
  if (!response.ok) throw new Error(path + " answered " + response.status);
  return response.json();
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return (s * 1000).toFixed(1) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " days";
}

function overview(status, snapshot) {
  const box = document.getElementById("overview");
  const store = status.store;
  const fresh = store.connected
    ? badge("connected", "ok")
    : badge("disconnected: serving the last snapshot (fail static)", "bad");
  box.replaceChildren(
    el("div", { id: "store" }, "store ", el("b", {}, store.backend), fresh),
    el("div", { id: "revision" }, "snapshot revision", el("b", {}, snapshot.revision)),
    el("div", { id: "age", "data-age": snapshot.age_seconds }, "snapshot age",
      el("b", {}, seconds(snapshot.age_seconds))),
    el("div", { id: "table" }, "routing table revision", el("b", {}, status.router.table_revision)),
    el("div", { id: "propagation" }, "propagation p50 / p99",
      el("b", {}, seconds(status.router.propagation.p50_seconds) + " / " +
        seconds(status.router.propagation.p99_seconds)),
      el("span", { class: "muted" }, status.router.propagation.count + " changes")),
  );
  document.getElementById("build").textContent =
    "v" + status.version + " (" + status.commit + "), up " + seconds(status.uptime_seconds);
}

function routeMatch(route) {
  if (route.kind === "tcp") return "listen " + route.listen + (route.sni ? " sni " + route.sni : "");
  let text = "host " + (route.host || "*");
  if (route.path) {
    const [kind, value] = Object.entries(route.path)[0];
    text += " path " + kind + " " + value;
  }
  if (route.methods && route.methods.length) text += " " + route.methods.join(",");
  return text;
}

function routeTarget(route) {
  if (route.split && route.split.length) {
    return route.split
      .map((t) => t.service + (t.tag ? "[" + t.tag + "]" : "") + " " + t.weight)
      .join(", ");
  }
  return route.service || "";
}

function routes(snapshot) {
  const body = document.querySelector("#routes tbody");
  const rows = Object.entries(snapshot.routes).map(([name, route]) =>
    el("tr", { "data-route": name },
      el("td", {}, name), el("td", {}, route.kind || "http"),
      el("td", {}, routeMatch(route)), el("td", {}, routeTarget(route))));
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "no routes")));
  body.replaceChildren(...rows);
}

function services(snapshot) {
  const box = document.getElementById("services");
  const blocks = Object.entries(snapshot.services).map(([name, instances]) => {
    const passing = instances.filter((i) => i.health === "passing").length;
    const rows = instances.map((i) =>
      el("tr", { "data-instance": name + "/" + i.id, "data-health": i.health },
        el("td", {}, i.id), el("td", {}, i.address + ":" + i.port),
        el("td", {}, i.zone || "–"), el("td", {}, i.weight || 1),
        el("td", {}, (i.tags || []).join(", ")),
        el("td", {}, badge(i.health, "health-" + i.health))));
    return el("div", { "data-service": name },
      el("h3", {}, name + " ", badge(passing + "/" + instances.length + " passing",
        passing === 0 ? "bad" : passing < instances.length ? "warn" : "ok")),
      el("table", {},
        el("thead", {}, el("tr", {}, ...["id", "address", "zone", "weight", "tags", "health"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows)));
  });
  if (blocks.length === 0) blocks.push(el("p", { class: "muted" }, "no services registered"));
  box.replaceChildren(...blocks);
}

async function deployments(apps) {
  const section = document.getElementById("deployments");
  const running = apps.apps.filter((a) => a.in_progress !== null && a.in_progress !== undefined);
  if (running.length === 0) {
    section.hidden = true;
    return;
  }
  const views = await Promise.all(running.map((a) => api("/v1/apps/" + encodeURIComponent(a.name))));
  const blocks = views.map((app) => {
    const d = app.in_progress;
    if (!d) return null;
    const steps = (d.steps || []).map((s) => el("li", {}, s.name + ": " + s.state + (s.detail ? " (" + s.detail + ")" : "")));
    return el("div", { "data-deployment": app.name + "/" + d.id },
      el("h3", {}, app.name + " #" + d.id + " ", badge(d.state, "warn")),
      el("p", {}, d.image + " — " + d.weight + "% of traffic, " + d.passing + "/" + d.wanted + " instances passing"),
      el("ul", {}, ...steps));
  });
  document.getElementById("deployment-list").replaceChildren(...blocks.filter(Boolean));
  section.hidden = false;
}

function certificates(status) {
  const section = document.getElementById("certificates-section");
  section.hidden = status.certificates.length === 0;
  const rows = status.certificates.map((c) => {
    const days = c.expires_in_seconds / 86400;
    const cls = days < 0 ? "bad" : days < 14 ? "warn" : "ok";
    return el("tr", { "data-cert": c.cert },
      el("td", {}, c.listener), el("td", {}, c.names.join(", ")), el("td", {}, c.cert),
      el("td", {}, new Date(c.not_after * 1000).toISOString().slice(0, 10) + " ",
        badge(days < 0 ? "expired" : "in " + seconds(c.expires_in_seconds), cls)));
  });
  document.querySelector("#certificates tbody").replaceChildren(...rows);
}

function showLogin() {
  document.getElementById("status").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("updated").textContent = "token required";
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const [status, snapshot, apps] = await Promise.all([
      api("/v1/status"), api("/v1/snapshot"), api("/v1/apps"),
    ]);
    overview(status, snapshot);
    routes(snapshot);
    services(snapshot);
    certificates(status);
    await deployments(apps);
    document.getElementById("login").hidden = true;
    document.getElementById("status").hidden = false;
    error.hidden = true;
    document.getElementById("updated").textContent =
      "updated " + new Date().toLocaleTimeString() + " (revision " + snapshot.revision + ")";
  } catch (e) {
    if (e instanceof NeedToken) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin();
      return; // polling resumes when a token is given
    }
    error.textContent = "cannot reach the admin API: " + e.message;
    error.hidden = false;
  }
  setTimeout(refresh, POLL_MS);
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
  document.getElementById("login").hidden = true;
  refresh();
});

refresh();
