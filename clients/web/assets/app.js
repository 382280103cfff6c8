// grantmesh portal: the little JavaScript the pages use. No framework, no
// build step. Pages work without it; it adds live updates and countdowns.
"use strict";

// --- expiry countdowns: any element with data-countdown="<epoch ms>" -----
function countdownText(ms) {
  const left = ms - Date.now();
  if (left <= 0) return "expired";
  const s = Math.floor(left / 1000);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
        m = Math.floor(s % 3600 / 60), sec = s % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return (d > 0 ? d + "d " : "") + pad(h) + ":" + pad(m) + ":" + pad(sec) + " left";
}
function tickCountdowns() {
  document.querySelectorAll("[data-countdown]").forEach((el) => {
    const ms = Number(el.dataset.countdown);
    if (ms > 0) el.textContent = countdownText(ms);
  });
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function flashed(node) {
  node.classList.remove("flashed");
  void node.offsetWidth; // restart the animation
  node.classList.add("flashed");
}
function setLive(on, text) {
  const live = document.getElementById("live");
  if (!live) return;
  live.className = "live " + (on ? "on" : "off");
  live.textContent = text;
}

// --- the account page: follows /accounts/ID/events (Server-Sent Events) ---
function followAccount(root) {
  const id = root.dataset.account;
  const manage = root.dataset.manage === "1";
  const csrf = root.dataset.csrf;
  const firstPage = root.dataset.firstPage === "1";
  const source = new EventSource("/accounts/" + encodeURIComponent(id) + "/events");
  source.addEventListener("open", () => setLive(true, "live"));
  source.addEventListener("error", () => {
    // The browser reconnects by itself after a network error; after a
    // refusal (HTTP 4xx) it gives up and readyState is CLOSED.
    if (source.readyState === EventSource.CLOSED) setLive(false, "live updates unavailable");
    else setLive(false, "reconnecting…");
  });
  source.addEventListener("account", (message) => {
    const event = JSON.parse(message.data);
    const a = event.account;
    const balance = document.getElementById("balance");
    if (balance.textContent !== a.balance) { balance.textContent = a.balance; flashed(balance); }
    document.getElementById("award").textContent = a.award;
    const state = document.getElementById("state");
    if (state.textContent !== a.state) { state.textContent = a.state; state.className = "badge " + a.state; flashed(state); }
    const countdown = document.getElementById("countdown");
    countdown.dataset.countdown = String(a.expires_ms);
    document.getElementById("expires").textContent = a.expires;
    document.getElementById("withdraw").disabled = a.state !== "open";
    renderMembers(a, manage, csrf);
    if (Array.isArray(event.invited)) renderInvited(event.invited);
    if (event.transaction && firstPage) addTransaction(event.transaction);
    tickCountdowns();
  });
}
function renderMembers(a, manage, csrf) {
  const list = document.getElementById("members");
  const before = Array.from(list.children).map((li) => li.dataset.id).join(",");
  const after = a.members.map((m) => m.id).join(",");
  if (before === after) return;
  list.replaceChildren(...a.members.map((m) => {
    const li = el("li", { "data-id": m.id }, el("span", { class: "name" }, m.name), " ",
      el("small", {}, m.email), " ", el("span", { class: "badge role" }, m.role));
    if (manage && !m.is_pi) {
      const form = el("form", { method: "post", class: "inline",
        action: "/accounts/" + encodeURIComponent(a.id) + "/members/" + encodeURIComponent(m.id) + "/remove" },
        el("input", { type: "hidden", name: "csrf", value: csrf }),
        el("button", { class: "link danger" }, "remove"));
      li.append(" ", form);
    }
    return li;
  }));
  flashed(list);
}
// The principal investigator's "Invited, not yet answered" line; the
// portal sends the list when the members change (an invitation accepted).
function renderInvited(emails) {
  const line = document.getElementById("invited");
  const list = document.getElementById("invited-emails");
  if (!line || !list) return;
  const text = emails.join(", ");
  if (list.textContent === text) return;
  list.textContent = text;
  line.hidden = emails.length === 0;
  if (!line.hidden) flashed(line);
}
function addTransaction(t) {
  const body = document.getElementById("transactions-body");
  if (document.getElementById("tx-" + t.id)) return;
  const row = el("tr", { id: "tx-" + t.id },
    el("td", { "data-label": "When", class: "when" }, t.when), el("td", { "data-label": "By" }, t.who),
    el("td", { "data-label": "Amount", class: "num" }, t.amount), el("td", { "data-label": "Memo" }, t.memo),
    el("td", { "data-label": "Balance after", class: "num" }, t.balance_after));
  body.prepend(row);
  flashed(row);
  const none = document.getElementById("no-transactions");
  if (none) none.remove();
}

// --- the sign-up form: the College's verdict on the password as one types --
// The portal runs the College's own check (POST /signup/strength); the
// College checks again on sign-up, so this is a hint, never the judge.
const STRENGTH_PAUSE_MS = 250; // ask once typing pauses, not on every key
function followStrength(form) {
  const box = form.elements.password;
  const shown = document.getElementById("strength");
  const meter = document.getElementById("strength-meter");
  const hint = document.getElementById("password-strength");
  const minScore = Number(meter.getAttribute("low"));
  let timer = null, asked = 0;
  const ask = () => {
    const mine = ++asked;
    if (box.value === "") { shown.hidden = true; return; }
    const body = new URLSearchParams({ csrf: form.dataset.csrf, password: box.value,
      name: form.elements.name.value, email: form.elements.email.value });
    fetch("/signup/strength", { method: "POST", body: body, credentials: "same-origin" })
      .then((r) => r.ok ? r.json() : null)
      .then((verdict) => {
        if (!verdict || mine !== asked) return; // a later keystroke asked again
        shown.hidden = false;
        meter.value = verdict.ok ? Math.max(minScore, verdict.score ?? minScore) : (verdict.score ?? 0);
        hint.textContent = verdict.message;
        hint.className = verdict.ok ? "ok" : "weak";
      }, () => {});
  };
  const later = () => { clearTimeout(timer); timer = setTimeout(ask, STRENGTH_PAUSE_MS); };
  for (const name of ["password", "name", "email"]) form.elements[name].addEventListener("input", later);
  if (box.value !== "") ask();
}

// --- the mesh dashboard: follows /mesh/events ------------------------------
function ago(ms) {
  if (ms < 1000) return ms + " ms";
  return (ms / 1000).toFixed(1) + " s";
}
function followMesh(root) {
  const source = new EventSource("/mesh/events");
  source.addEventListener("open", () => setLive(true, "live"));
  source.addEventListener("error", () => setLive(false, source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting…"));
  source.addEventListener("mesh", (message) => renderMesh(root, JSON.parse(message.data)));
}
// A table whose cells carry their column's name (data-label), so that on a
// phone each row can show as a card of "label: value" lines.
// columns: [heading, cell class] pairs.
function table(id, columns, rows) {
  return el("table", Object.assign({ class: "list" }, id ? { id: id } : {}),
    el("thead", {}, el("tr", {}, ...columns.map(([h, c]) => el("th", c ? { class: c } : {}, h)))),
    el("tbody", {}, ...rows.map((row) => {
      row.cells.forEach((cell, n) => {
        cell.setAttribute("data-label", columns[n][0]);
        if (columns[n][1]) cell.className = columns[n][1];
      });
      return el("tr", row.attrs, ...row.cells);
    })));
}
const INSTANCE_COLUMNS = [["Instance", "id"], ["Address", "id"], ["Labels", "labels wraps"],
  ["TTL", "num"], ["Last beat", "num"], ["Lease", ""], ["Health", ""], ["Requests", "num"]];
const REPLICA_COLUMNS = [["Replica", "id"], ["Health", ""], ["Latency", "num"]];
// `metrics=http://host:port/metrics` may break after "=" and each "/", never
// inside a host or a word.
function labelCode(label) {
  const code = el("code", {});
  label.split(/(?<=[=\/])/).forEach((part, n) => {
    if (n > 0 && !part.startsWith("/")) code.append(el("wbr", {}));
    code.append(part);
  });
  return code;
}
function badge(health) {
  return el("span", { class: "badge " + health.replace(/ /g, "-") }, health);
}
function renderMesh(root, mesh) {
  if (!mesh.connected) setLive(false, "no registry answering (" + mesh.registries.join(", ") + ")");
  else setLive(true, "live");
  const sections = mesh.services.map((service) => {
    const rows = service.instances.map((i) => {
      let rate = "—";
      if (i.requests_per_second !== null && i.requests_per_second !== undefined) rate = i.requests_per_second.toFixed(1) + " req/s";
      else if (i.metrics_note) rate = "metrics: " + i.metrics_note;
      return { attrs: { "data-instance": i.id, class: "instance" }, cells: [
        el("td", {}, el("code", {}, i.id)),
        el("td", {}, i.address),
        el("td", {}, ...i.labels.map(labelCode)),
        el("td", {}, ago(i.ttl_ms)),
        el("td", {}, ago(i.since_last_beat_ms)),
        el("td", {}, i.keep_alive_stream ? "stream" : "beats"),
        el("td", {}, badge(i.health)),
        el("td", {}, rate)] };
    });
    return el("section", { class: "service", "data-service": service.name },
      el("h2", {}, service.name + " ", el("small", {}, service.instances.length + " live")),
      table(null, INSTANCE_COLUMNS, rows));
  });
  if (sections.length === 0) sections.push(el("p", { class: "empty" }, "No live instances."));
  const replicas = (mesh.replicas || []).map((r) => ({ attrs: { "data-replica": r.url }, cells: [
    el("td", {}, el("code", {}, r.url)),
    el("td", {}, badge(r.health)),
    el("td", {}, r.latency_ms === null || r.latency_ms === undefined ? "—" : r.latency_ms + " ms")] }));
  sections.unshift(el("section", { class: "service", id: "registry-replicas" },
    el("h2", {}, "Registry replicas ", el("small", {}, mesh.connected ? "answering" : "none answering")),
    table("replicas", REPLICA_COLUMNS, replicas)));
  root.replaceChildren(...sections);
  const removals = document.getElementById("removals");
  if (mesh.removals.length === 0) {
    removals.replaceChildren(el("li", { class: "none" }, "None yet."));
    return;
  }
  removals.replaceChildren(...mesh.removals.map((r) =>
    el("li", { "data-removed": r.id }, el("time", {}, r.at), " — ",
      el("strong", {}, r.service + " " + r.id), " at " + r.address + " removed: " + r.reason)));
}

document.addEventListener("DOMContentLoaded", () => {
  tickCountdowns();
  setInterval(tickCountdowns, 1000);
  const account = document.getElementById("account");
  if (account) followAccount(account);
  const mesh = document.getElementById("mesh");
  if (mesh) followMesh(mesh);
  const signup = document.getElementById("signup-form");
  if (signup) followStrength(signup);
});
