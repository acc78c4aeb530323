/*
 * docket fault console: the page (no build step; plain ES2017, no library).
 *
 * It reads the API token from location.hash (#token=...), subscribes to
 * GET /api/stream?token=... (EventSource, reconnecting) and renders each State
 * (console/CONTRACT: nodes, strip, safety, liveness, score, log). Controls POST to
 * /api/nodes/{name}/{action}, /api/rate and /api/stop with "Authorization: Bearer".
 *
 * Stable hooks (the browser test, tests/integration/test_console_browser.py, uses them;
 * change them only together with it):
 *
 *   body[data-stopped="true"]             the console was stopped from this page
 *   #conn[data-conn]                      "connecting" | "open" | "stale" | "reconnecting" | "no-token" | "bad-token" | "stopped"
 *   #clock, #produced                     t and input records produced
 *   #stack-phase                          shown while some node was never started yet (starts 0)
 *   #rate-input, #rate-set                the offered rate (events/s) and its submit button
 *   #stop                                 stop the console (asks window.confirm first)
 *   #notice[data-kind]                    the last notice: "error" | "info"
 *   .node[data-node=NAME][data-kind=KIND][data-state=STATE]
 *                                         one card per node: NAME a|b|c|clerk|broker,
 *                                         KIND instance|clerk|broker, STATE as in the State JSON
 *                                         (ready|starting|restoring|dead|slowed|faulty|stopped)
 *   .node [data-field=NAME]               a node's figure: state, pid, starts, lag, events_per_s,
 *                                         pending, decisions_per_s, divergences_per_s, corrupt, slowed
 *   button[data-node=NAME][data-action=ACTION][data-arg=ARG]
 *                                         a control: ACTION kill|restart|slow|corrupt|stop|start;
 *                                         ARG for slow on|off, for corrupt bitflip|state|off;
 *                                         aria-pressed="true" on the slow/corrupt setting in force
 *   .node .node-msg[data-error=CODE]      the last refusal of that node's control (e.g. already_dead),
 *                                         with the server's message as text; data-error="" when ok
 *   #strip .strip-row[data-partition=P]   one row per input partition
 *   #strip .pos[data-p][data-o][data-fate][data-agree][data-outvoted]
 *                                         one input position: fate agreed|withheld|diverged|pending,
 *                                         agree = the agreeing instances joined by "-" (e.g. "a-c"),
 *                                         outvoted = the withheld copies' instances ("a")
 *   #legend                               the strip's colour key
 *   #safety[data-ok="true"|"false"], #safety-text, #safety-first, #balance[data-ok]
 *   #score[data-unbroken], #score-value   the score: seconds of decision delay caused
 *   #latency-plot (svg) .p50 / .p99 paths, .gap rects (seconds without a decision), .ytick labels,
 *   #latency-now (p50/p99 of liveness.window, else the newest second), #stalled li[data-p][data-o]
 *   #log li                               the console's action log, newest first
 *   #tour, #tour-next, #tour-back, #tour-skip, #tour-open
 *                                         the guided tour; dismissal is kept in localStorage
 *                                         under "docket.console.tour" = "done"
 */
"use strict";

(function () {
  // ------------------------------------------------------------------ basics

  const TOUR_KEY = "docket.console.tour";
  const NODE_ORDER = ["a", "b", "c", "clerk", "broker"];
  const ACTIONS = {
    instance: [["kill"], ["restart"], ["slow", "on"], ["slow", "off"],
               ["corrupt", "bitflip"], ["corrupt", "state"], ["corrupt", "off"]],
    clerk: [["kill"], ["restart"], ["slow", "on"], ["slow", "off"]],
    broker: [["stop"], ["start"]],
  };
  const STATE_HELP = {
    ready: "running and caught up",
    starting: "process started, joining its consumer group",
    restoring: "rebuilding its tables from the changelog before it may speak",
    dead: "not running (killed)",
    slowed: "stopped 600 ms of every 1000 ms (SIGSTOP/SIGCONT)",
    faulty: "running with a fault injected into its copies or state",
    stopped: "the broker is stopped",
  };

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmtNum(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return Number(v).toFixed(digits === undefined ? 0 : digits);
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 10000) return `${(ms / 1000).toFixed(1)} s`;
    return `${Math.round(ms / 1000)} s`;
  }

  function parseToken() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    return params.get("token") || "";
  }

  const TOKEN = parseToken();
  let lastState = null;
  let lastStateAt = 0;
  let stopped = false;

  // ------------------------------------------------------------------ notices

  let noticeTimer = null;
  function notice(text, kind) {
    const box = $("#notice");
    box.textContent = text;
    box.dataset.kind = kind || "info";
    box.hidden = false;
    clearTimeout(noticeTimer);
    if (kind !== "sticky") {
      noticeTimer = setTimeout(() => { box.hidden = true; }, kind === "error" ? 10000 : 5000);
    }
  }

  function setConn(value, text) {
    const conn = $("#conn");
    conn.dataset.conn = value;
    conn.textContent = text;
  }

  // ------------------------------------------------------------------ the API

  async function post(path, body) {
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        headers: { "Authorization": `Bearer ${TOKEN}`, "Content-Type": "application/json" },
        body: JSON.stringify(body === undefined ? {} : body),
      });
    } catch (err) {
      return { ok: false, status: 0, error: "unreachable", message: `the console did not answer (${err.message})` };
    }
    let data = {};
    try { data = await response.json(); } catch (_) { /* a body that is not JSON */ }
    if (response.ok) return Object.assign({ ok: true, status: response.status }, data);
    return {
      ok: false,
      status: response.status,
      error: data.error || `http_${response.status}`,
      message: data.message || response.statusText || "refused",
    };
  }

  // ------------------------------------------------------------------ nodes

  const cards = new Map();

  function actionLabel(action, arg) {
    if (action === "slow" || action === "corrupt") return arg;
    return action;
  }

  function actionTitle(name, action, arg) {
    switch (action) {
      case "kill": return `SIGKILL ${name}`;
      case "restart": return `start ${name} again (it restores its state, then catches up)`;
      case "slow": return arg === "on" ? `slow ${name}: stopped 600 ms of every second` : `let ${name} run at full speed`;
      case "corrupt":
        if (arg === "bitflip") return `flip a bit in some of ${name}'s copies (live)`;
        if (arg === "state") return `corrupt some of ${name}'s state writes (live)`;
        return `turn ${name}'s faults off`;
      case "stop": return "stop the broker";
      case "start": return "start the broker again";
      default: return action;
    }
  }

  function makeCard(node) {
    const name = node.name;
    const kind = node.kind || (name === "broker" ? "broker" : name === "clerk" ? "clerk" : "instance");
    const stats = el("dl", { class: "node-stats" });
    const stat = (label, field, title) => {
      stats.append(el("dt", { text: label, title: title || null }), el("dd", { "data-field": field, text: "–" }));
    };
    if (kind === "instance") {
      stat("lag", "lag", "input records not yet evaluated by this instance");
      stat("events/s", "events_per_s", "input events evaluated per second");
    } else if (kind === "clerk") {
      stat("decisions/s", "decisions_per_s", "positions decided (published or diverged) per second");
      stat("pending", "pending", "input positions waiting for enough matching copies");
      stat("divergences/s", "divergences_per_s", "positions whose copies disagreed, per second");
    }
    stat("pid", "pid");
    stat("starts", "starts", "how many times the console started it");

    const controls = el("div", { class: "controls" });
    const groups = {};
    for (const [action, arg] of ACTIONS[kind] || []) {
      const group = action === "slow" || action === "corrupt" ? action : "life";
      if (!groups[group]) {
        groups[group] = el("div", { class: `control-group group-${group}` },
          el("span", { class: "group-label", text: group === "life" ? "" : group }));
        controls.append(groups[group]);
      }
      const button = el("button", {
        type: "button",
        class: `ctl ctl-${action}`,
        "data-node": name,
        "data-action": action,
        "data-arg": arg || null,
        title: actionTitle(name, action, arg),
        text: actionLabel(action, arg),
        onclick: () => act(name, action, arg, button),
      });
      groups[group].append(button);
    }

    const card = el("article", { class: "node", "data-node": name, "data-kind": kind, "data-state": node.state || "unknown" },
      el("header", { class: "node-head" },
        el("span", { class: "node-name", text: name }),
        el("span", { class: "node-kind", text: kind }),
        el("span", { class: "node-state", "data-field": "state", text: node.state || "–" })),
      stats,
      el("div", { class: "node-flags" },
        el("span", { class: "flag flag-slowed", "data-field": "slowed", hidden: "" }),
        el("span", { class: "flag flag-corrupt", "data-field": "corrupt", hidden: "" })),
      controls,
      el("div", { class: "node-msg", "data-error": "", role: "alert" }));
    return card;
  }

  function updateCard(node) {
    let card = cards.get(node.name);
    if (!card) {
      card = makeCard(node);
      cards.set(node.name, card);
      const box = $("#nodes");
      // keep a, b, c, clerk, broker order; unknown names go last
      const rank = (n) => { const i = NODE_ORDER.indexOf(n); return i < 0 ? 99 : i; };
      const after = Array.from(box.children).find((c) => rank(c.dataset.node) > rank(node.name));
      box.insertBefore(card, after || null);
    }
    const state = node.state || "unknown";
    card.dataset.state = state;
    card.title = STATE_HELP[state] ? `${node.name}: ${STATE_HELP[state]}` : node.name;
    const set = (field, text) => {
      const f = $(`[data-field="${field}"]`, card);
      if (f) f.textContent = text;
    };
    // before the console's first start of a node (starts 0) it is not dead, just not started yet
    set("state", !node.starts && (state === "dead" || state === "stopped") ? "not started" : state);
    set("pid", node.pid === null || node.pid === undefined ? "–" : String(node.pid));
    set("starts", fmtNum(node.starts));
    set("lag", fmtNum(node.lag));
    set("events_per_s", fmtNum(node.events_per_s, 1));
    set("decisions_per_s", fmtNum(node.decisions_per_s, 1));
    set("pending", fmtNum(node.pending));
    set("divergences_per_s", fmtNum(node.divergences_per_s, 1));
    const slowed = $('[data-field="slowed"]', card);
    slowed.hidden = !node.slowed;
    slowed.textContent = node.slowed ? "slowed" : "";
    const corrupt = $('[data-field="corrupt"]', card);
    corrupt.hidden = !node.corrupt;
    corrupt.textContent = node.corrupt ? `corrupt: ${node.corrupt}` : "";
    const running = !["dead", "stopped"].includes(state);
    for (const b of $$("button[data-action]", card)) {
      const { action, arg } = b.dataset;
      let pressed = null;
      let apt = true; // whether the control makes sense now (others stay clickable, dimmed)
      if (action === "slow") { pressed = String((arg === "on") === !!node.slowed); apt = running; }
      if (action === "corrupt") {
        pressed = String((node.corrupt || "off") === arg);
      }
      if (action === "kill" || action === "stop") apt = running;
      if (action === "restart" || action === "start") apt = !running;
      if (pressed === null) b.removeAttribute("aria-pressed"); else b.setAttribute("aria-pressed", pressed);
      b.classList.toggle("inapt", !apt);
    }
  }

  function showNodeMsg(name, text, code) {
    const card = cards.get(name);
    if (!card) { notice(text, code ? "error" : "info"); return; }
    const msg = $(".node-msg", card);
    msg.textContent = text;
    msg.dataset.error = code || "";
    msg.classList.remove("fade");
    void msg.offsetWidth; // restart the fade animation
    msg.classList.add("fade");
  }

  async function act(name, action, arg, button) {
    let body;
    if (action === "slow") body = { on: arg === "on" };
    else if (action === "corrupt") body = { kind: arg === "off" ? null : arg };
    button.dataset.busy = "true";
    const r = await post(`/api/nodes/${encodeURIComponent(name)}/${encodeURIComponent(action)}`, body);
    delete button.dataset.busy;
    const what = `${action}${arg ? " " + arg : ""}`;
    if (r.ok) {
      if (r.node) updateCard(r.node);
      showNodeMsg(name, `${what}: done`, "");
    } else {
      const status = r.status ? `${r.status} ` : "";
      showNodeMsg(name, `${what} refused (${status}${r.error}): ${r.message}`, r.error);
      if (r.status === 401) tokenRefused();
    }
  }

  // ------------------------------------------------------------------ the strip

  const AGREE_KEYS = ["a-b-c", "a-b", "a-c", "b-c"];

  function buildLegend() {
    const legend = $("#legend");
    const item = (attrs, label, title) => el("span", { class: "legend-item", title: title || null },
      el("span", Object.assign({ class: "pos legend-pos" }, attrs)), el("span", { text: label }));
    legend.append(el("span", { class: "legend-title", text: "agreed by" }));
    for (const key of AGREE_KEYS) {
      legend.append(item({ "data-fate": "agreed", "data-agree": key }, key, `published: the copies of ${key.split("-").join(", ")} matched`));
    }
    legend.append(
      item({ "data-fate": "withheld", "data-agree": "b-c", "data-outvoted": "a" }, "withheld",
        "published by the agreeing instances (colour) while another copy disagreed: that copy was withheld"),
      item({ "data-fate": "diverged", "data-agree": "" }, "diverged", "copies disagreed and nothing was published"),
      item({ "data-fate": "pending", "data-agree": "" }, "pending", "not decided yet"));
  }

  function posTitle(pos) {
    let t = `partition ${pos.p}, offset ${pos.o}: ${pos.fate}`;
    if (pos.instances && pos.instances.length) t += `; agreed: ${pos.instances.join(", ")}`;
    if (pos.outvoted && pos.outvoted.length) t += `; withheld copy of ${pos.outvoted.join(", ")}`;
    return t;
  }

  function renderStrip(strip) {
    const box = $("#strip");
    const partitions = Math.max(strip && strip.partitions || 0, 0);
    const byP = new Map();
    for (let p = 0; p < partitions; p++) byP.set(p, []);
    for (const pos of (strip && strip.positions) || []) {
      if (!byP.has(pos.p)) byP.set(pos.p, []);
      byP.get(pos.p).push(pos);
    }
    const rows = [];
    for (const p of Array.from(byP.keys()).sort((x, y) => x - y)) {
      const list = byP.get(p).slice().sort((x, y) => x.o - y.o);
      const cells = el("div", { class: "strip-cells" });
      for (const pos of list) {
        cells.append(el("span", {
          class: "pos",
          "data-p": pos.p,
          "data-o": pos.o,
          "data-fate": pos.fate,
          "data-agree": (pos.instances || []).slice().sort().join("-"),
          "data-outvoted": (pos.outvoted || []).slice().sort().join("-"),
          title: posTitle(pos),
        }));
      }
      const newest = list.length ? `@${list[list.length - 1].o}` : "";
      rows.push(el("div", { class: "strip-row", "data-partition": p },
        el("span", { class: "strip-label", text: `p${p}` }),
        cells,
        el("span", { class: "strip-newest", text: newest })));
    }
    box.replaceChildren(...rows);
    if (!rows.length) box.append(el("div", { class: "empty", text: "no input positions yet" }));
  }

  // ------------------------------------------------------------------ safety, score, log

  function renderSafety(safety, score) {
    const box = $("#safety");
    if (safety) {
      const ok = (safety.wrong || 0) === 0;
      box.dataset.ok = String(ok);
      $("#safety-text").textContent = safety.text || (ok ? `SAFETY HOLDS: 0 wrong results of ${safety.checked}` : "SAFETY BROKEN");
      const first = safety.first_wrong;
      $("#safety-first").textContent = !ok && first ? `first wrong result: partition ${first.p}, offset ${first.o}: ${first.why}` : "";
      const balance = $("#balance");
      balance.dataset.ok = String(!!safety.balance_ok);
      balance.textContent = `balance ${safety.balance_ok ? "holds" : "BROKEN"}: ${safety.balance_detail || ""}`;
    }
    if (score) {
      const sbox = $("#score");
      sbox.dataset.unbroken = String(!!score.safety_unbroken);
      $("#score-value").textContent = fmtNum(score.delay_s, 1);
      $("#score-note").textContent = score.safety_unbroken
        ? "with safety unbroken: each second a decision waits past its first counts"
        : "safety broke: the score does not count (that would be a bug in docket: please report it)";
    }
  }

  function renderLog(log) {
    const items = (log || []).slice().sort((x, y) => y.t - x.t)
      .map((entry) => el("li", {}, el("span", { class: "log-t", text: `${fmtNum(entry.t, 1)} s` }), el("span", { class: "log-text", text: entry.text })));
    const box = $("#log");
    box.replaceChildren(...items);
    if (!items.length) box.append(el("li", { class: "empty", text: "nothing done yet" }));
  }

  function renderStalled(stalled) {
    const items = (stalled || []).map((s) => el("li", { "data-p": s.p, "data-o": s.o },
      el("span", { class: "stalled-pos", text: `p${s.p}@${s.o}` }), el("span", { class: "stalled-age", text: ` waiting ${fmtMs(s.age_ms)}` })));
    const box = $("#stalled");
    box.replaceChildren(...items);
    if (!items.length) box.append(el("li", { class: "empty", text: "nothing waiting" }));
  }

  // ------------------------------------------------------------------ the latency plot

  const PLOT = { w: 720, h: 240, left: 62, right: 14, top: 14, bottom: 34 };

  function msLabel(ms) {
    if (ms < 1000) return `${ms} ms`;
    return `${ms / 1000} s`;
  }

  function renderPlot(series, now, window_) {
    const plot = $("#latency-plot");
    const { w, h, left, right, top, bottom } = PLOT;
    const pts = (series || []).filter((r) => Array.isArray(r) && r.length >= 3);
    const tEndData = pts.length ? pts[pts.length - 1][0] : 0;
    let tEnd = Math.max(now || 0, tEndData);
    let tStart = Math.max(0, tEnd - 180);
    if (tEnd - tStart < 60) tEnd = tStart + 60;
    const visible = pts.filter((r) => r[0] >= tStart);
    const values = [];
    for (const r of visible) for (const v of [r[1], r[2]]) if (typeof v === "number" && v > 0) values.push(v);
    const vMax = values.length ? Math.max(...values) : 100;
    const vMin = values.length ? Math.min(...values) : 10;
    const dMin = Math.min(10, Math.pow(10, Math.floor(Math.log10(Math.max(vMin, 1)))));
    const dMax = Math.max(1000, Math.pow(10, Math.ceil(Math.log10(vMax * 1.05))));
    const lo = Math.log10(dMin), hi = Math.log10(dMax);
    const x = (t) => left + (t - tStart) / (tEnd - tStart) * (w - left - right);
    const y = (ms) => top + (hi - Math.log10(Math.max(ms, dMin))) / (hi - lo) * (h - top - bottom);

    const parts = [];
    // gaps: seconds without a decision (a break of more than 2.5 s between points)
    for (let i = 1; i < visible.length; i++) {
      if (visible[i][0] - visible[i - 1][0] > 2.5) {
        parts.push(svg("rect", { class: "gap", x: x(visible[i - 1][0]), y: top, width: x(visible[i][0]) - x(visible[i - 1][0]), height: h - top - bottom },));
      }
    }
    if (visible.length && now && now - visible[visible.length - 1][0] > 2.5) {
      const gx = x(visible[visible.length - 1][0]);
      parts.push(svg("rect", { class: "gap", x: gx, y: top, width: Math.max(0, x(Math.min(now, tEnd)) - gx), height: h - top - bottom }));
    }
    // y grid: decades and their 2x, 5x; labels on decades
    for (let d = lo; d <= hi; d++) {
      const base = Math.pow(10, d);
      for (const m of [1, 2, 5]) {
        const v = base * m;
        if (v > dMax) continue;
        parts.push(svg("line", { class: m === 1 ? "grid major" : "grid", x1: left, x2: w - right, y1: y(v), y2: y(v) }));
        if (m === 1 || (hi - lo <= 2)) {
          parts.push(svg("text", { class: "tick ytick", x: left - 6, y: y(v) + 4, "text-anchor": "end" }, msLabel(Math.round(v))));
        }
      }
    }
    // the 100 ms target
    parts.push(svg("line", { class: "target", x1: left, x2: w - right, y1: y(100), y2: y(100) }));
    // x ticks
    const span = tEnd - tStart;
    const step = span <= 60 ? 10 : span <= 120 ? 20 : 30;
    for (let t = Math.ceil(tStart / step) * step; t <= tEnd + 1e-9; t += step) {
      parts.push(svg("line", { class: "grid", x1: x(t), x2: x(t), y1: top, y2: h - bottom }));
      parts.push(svg("text", { class: "tick xtick", x: x(t), y: h - bottom + 15, "text-anchor": "middle" }, `${t} s`));
    }
    // axes and their labels
    parts.push(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: h - bottom }));
    parts.push(svg("line", { class: "axis", x1: left, x2: w - right, y1: h - bottom, y2: h - bottom }));
    parts.push(svg("text", { class: "axis-label", x: (left + w - right) / 2, y: h - 3, "text-anchor": "middle" }, "console time (s)"));
    parts.push(svg("text", { class: "axis-label", x: 12, y: (top + h - bottom) / 2, "text-anchor": "middle",
      transform: `rotate(-90 12 ${(top + h - bottom) / 2})` }, "decision latency (ms, s)"));
    // the lines, broken where a second had no decision
    for (const [index, cls] of [[1, "p50"], [2, "p99"]]) {
      let d = "";
      let prevT = null;
      for (const r of visible) {
        const v = r[index];
        if (typeof v !== "number" || !(v > 0)) { prevT = null; continue; }
        const cmd = prevT === null || r[0] - prevT > 2.5 ? "M" : "L";
        d += `${cmd}${x(r[0]).toFixed(1)},${y(v).toFixed(1)}`;
        prevT = r[0];
      }
      parts.push(svg("path", { class: `line ${cls}`, d: d || "M0,0" }));
    }
    // key
    parts.push(svg("line", { class: "line p50", x1: left + 10, x2: left + 30, y1: top + 10, y2: top + 10 }));
    parts.push(svg("text", { class: "key", x: left + 34, y: top + 14 }, "p50"));
    parts.push(svg("line", { class: "line p99", x1: left + 70, x2: left + 90, y1: top + 10, y2: top + 10 }));
    parts.push(svg("text", { class: "key", x: left + 94, y: top + 14 }, "p99"));
    parts.push(svg("line", { class: "target", x1: left + 130, x2: left + 150, y1: top + 10, y2: top + 10 }));
    parts.push(svg("text", { class: "key", x: left + 154, y: top + 14 }, "100 ms"));
    plot.replaceChildren(...parts);

    // the figure to quote: p50/p99 over every result of the last window_.s seconds
    // (CONTRACT, Changes: liveness.window); else the newest second's
    const last = pts.length ? pts[pts.length - 1] : null;
    let now_ = "";
    if (window_ && window_.p50_ms !== null && window_.p50_ms !== undefined) {
      now_ = `last ${window_.s} s: p50 ${fmtMs(window_.p50_ms)}, p99 ${fmtMs(window_.p99_ms)}`;
    } else if (last) {
      now_ = `now: p50 ${fmtMs(last[1])}, p99 ${fmtMs(last[2])}`;
    }
    $("#latency-now").textContent = now_;
  }

  // ------------------------------------------------------------------ the whole state

  function render(state) {
    lastState = state;
    lastStateAt = Date.now();
    document.body.dataset.states = String((Number(document.body.dataset.states) || 0) + 1);
    $("#clock").textContent = `t = ${fmtNum(state.t, 1)} s`;
    $("#produced").textContent = `${fmtNum(state.produced)} produced`;
    const rateInput = $("#rate-input");
    if (document.activeElement !== rateInput && !rateInput.dataset.dirty) rateInput.value = state.rate;
    for (const node of state.nodes || []) updateCard(node);
    $("#stack-phase").hidden = !(state.nodes || []).some((n) => !n.starts);
    renderStrip(state.strip);
    renderSafety(state.safety, state.score);
    renderPlot(state.liveness && state.liveness.series, state.t, state.liveness && state.liveness.window);
    renderStalled(state.liveness && state.liveness.stalled);
    renderLog(state.log);
    tourUpdate(state);
  }

  // ------------------------------------------------------------------ the stream

  let source = null;
  let retryMs = 500;
  let retryTimer = null;

  function connect() {
    if (stopped) return;
    if (!TOKEN) {
      setConn("no-token", "no token");
      notice("This page needs the token: open the URL that `docket console` printed (it ends in #token=...).", "sticky");
      return;
    }
    setConn(source ? "reconnecting" : "connecting", source ? "reconnecting…" : "connecting…");
    source = new EventSource(`/api/stream?token=${encodeURIComponent(TOKEN)}`);
    const onState = (e) => {
      let state;
      try { state = JSON.parse(e.data); } catch (_) { return; }
      retryMs = 500;
      setConn("open", "live");
      render(state);
    };
    source.addEventListener("state", onState);
    source.onmessage = onState; // a server that sends unnamed events
    source.onopen = () => { setConn("open", "live"); };
    source.onerror = () => {
      if (stopped) return;
      setConn("reconnecting", "reconnecting…");
      if (source.readyState === EventSource.CLOSED) {
        // the browser gave up (e.g. a 401 or the server gone): find out why, retry with backoff
        source.close();
        diagnose();
        clearTimeout(retryTimer);
        retryTimer = setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, 5000);
      }
    };
  }

  async function diagnose() {
    try {
      const r = await fetch("/api/state", { headers: { "Authorization": `Bearer ${TOKEN}` } });
      if (r.status === 401) tokenRefused();
    } catch (_) {
      setConn("reconnecting", "console unreachable, retrying…");
    }
  }

  function tokenRefused() {
    setConn("bad-token", "token refused");
    notice("The console refused this page's token: open the URL it printed in its terminal (…/#token=...).", "error");
  }

  // stale: the stream is open but no state came for a while (e.g. the console is busy)
  setInterval(() => {
    if (stopped || !lastStateAt) return;
    if (Date.now() - lastStateAt > 3000 && $("#conn").dataset.conn === "open") setConn("stale", "no update for 3 s…");
  }, 1000);

  // ------------------------------------------------------------------ header controls

  $("#rate-input").addEventListener("input", (e) => { e.target.dataset.dirty = "true"; });
  $("#rate-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = $("#rate-input");
    const rate = Number(input.value);
    const r = await post("/api/rate", { rate });
    if (r.ok) {
      delete input.dataset.dirty;
      notice(`rate set to ${rate} events/s`, "info");
    } else {
      notice(`rate refused (${r.status} ${r.error}): ${r.message}`, "error");
    }
  });

  $("#stop").addEventListener("click", async () => {
    if (!window.confirm("Stop the console and everything it started (broker, instances, Clerk, workload)?")) return;
    const r = await post("/api/stop");
    if (r.ok) {
      stopped = true;
      if (source) source.close();
      clearTimeout(retryTimer);
      document.body.dataset.stopped = "true";
      setConn("stopped", "stopped");
      notice("The console is stopping everything it started. You can close this page.", "sticky");
    } else {
      notice(`stop refused (${r.status} ${r.error}): ${r.message}`, "error");
    }
  });

  // ------------------------------------------------------------------ the guided tour

  const node = (state, name) => (state.nodes || []).find((n) => n.name === name) || {};
  const TOUR = [
    {
      target: "#nodes",
      title: "Try to make docket publish a wrong result",
      text: "Three instances, a, b and c, evaluate every input event on their own. The Clerk publishes a result only when 2 of their copies match. Use the buttons on each card to kill, slow and corrupt them.",
    },
    {
      target: '[data-node="b"][data-action="kill"]',
      title: "Kill b",
      text: "SIGKILL instance b. Watch the Clerk keep publishing with a and c: the strip turns the a-c colour and the safety panel stays green.",
      done: (s) => node(s, "b").state === "dead",
    },
    {
      target: '[data-node="b"][data-action="restart"]',
      title: "Restart b",
      text: "b restores its tables from the changelog, replays what it missed without applying anything twice, and comes back ready.",
      done: (s) => (node(s, "b").starts || 0) > 1 && node(s, "b").state === "ready",
    },
    {
      target: '[data-node="a"][data-action="corrupt"][data-arg="bitflip"]',
      title: "Corrupt a",
      text: "Flip bits in some of a's copies. Watch its copies get withheld: b and c still agree, so their result is published and a's wrong copy never reaches a client.",
      done: (s) => (s.strip && s.strip.positions || []).some((p) => p.fate === "withheld"),
    },
    {
      target: "#nodes",
      title: "Kill two instances",
      text: "Turn a's faults off, then kill two instances. With one copy left no result can be published: decisions stop and the liveness plot climbs. Restart them: the Clerk resumes with nothing lost and nothing applied twice.",
      done: (s) => ["a", "b", "c"].filter((n) => node(s, n).state === "dead").length >= 2,
    },
    {
      target: "#safety",
      title: "The safety panel",
      text: "Every published result is checked against a pure replay of the input, and the balance of every sku is checked. It should read SAFETY HOLDS whatever you do.",
    },
    {
      target: "#score",
      title: "Your score",
      text: "The seconds of decision delay you caused (every second a decision waits beyond its first adds to it, also while it still waits), with safety unbroken. Slow, kill and stop the broker to raise it.",
    },
  ];
  let tourStep = -1;

  function tourDismissed() {
    try { return localStorage.getItem(TOUR_KEY) === "done"; } catch (_) { return false; }
  }

  function tourShow(i) {
    tourStep = Math.max(0, Math.min(i, TOUR.length - 1));
    $("#tour").hidden = false;
    tourRender();
  }

  function tourClose() {
    $("#tour").hidden = true;
    tourStep = -1;
    for (const t of $$(".tour-target")) t.classList.remove("tour-target");
    try { localStorage.setItem(TOUR_KEY, "done"); } catch (_) { /* private mode */ }
  }

  function tourRender() {
    if (tourStep < 0) return;
    const step = TOUR[tourStep];
    const box = $("#tour");
    box.dataset.step = String(tourStep);
    $("#tour-step-n").textContent = `tour ${tourStep + 1} of ${TOUR.length}`;
    $("#tour-title").textContent = step.title;
    $("#tour-text").textContent = step.text;
    $("#tour-back").disabled = tourStep === 0;
    $("#tour-next").textContent = tourStep === TOUR.length - 1 ? "finish" : "next";
    for (const t of $$(".tour-target")) t.classList.remove("tour-target");
    const target = $(step.target);
    if (target) {
      target.classList.add("tour-target");
      tourPlace(target);
    }
    tourUpdate(lastState);
  }

  function tourPlace(target) {
    const box = $("#tour");
    const r = target.getBoundingClientRect();
    const bw = box.offsetWidth, bh = box.offsetHeight;
    let topPx = r.bottom + 12;
    if (topPx + bh > window.innerHeight - 8) topPx = Math.max(8, r.top - bh - 12);
    let leftPx = Math.min(Math.max(8, r.left), window.innerWidth - bw - 8);
    box.style.top = `${topPx + window.scrollY}px`;
    box.style.left = `${leftPx + window.scrollX}px`;
  }

  function tourUpdate(state) {
    if (tourStep < 0 || !state) return;
    const step = TOUR[tourStep];
    const done = !!(step.done && step.done(state));
    $("#tour-done").hidden = !done;
    $("#tour").dataset.done = String(done);
  }

  $("#tour-next").addEventListener("click", () => { if (tourStep >= TOUR.length - 1) tourClose(); else tourShow(tourStep + 1); });
  $("#tour-back").addEventListener("click", () => tourShow(tourStep - 1));
  $("#tour-skip").addEventListener("click", tourClose);
  $("#tour-open").addEventListener("click", () => tourShow(0));
  window.addEventListener("resize", () => { if (tourStep >= 0) tourRender(); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && tourStep >= 0) tourClose(); });

  // ------------------------------------------------------------------ start

  buildLegend();
  connect();
  // the tour opens on first visit, once the cards it points at exist
  if (!tourDismissed() && TOKEN) {
    const wait = setInterval(() => {
      if (cards.size) { clearInterval(wait); tourShow(0); }
    }, 200);
  }
})();
