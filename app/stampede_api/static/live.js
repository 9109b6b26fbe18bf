// The live sale page: renders the samples the API streams as Server-Sent Events (/live/events for the
// overview, /live/sales/{sale}/events for one sale) and, where the API mints demo buyers, buys one unit
// through the real buy API and follows the reservation from pending to its outcome. No library: the page
// must work with nothing but the API behind it.
(() => {
  "use strict";
  const body = document.body;
  const view = body.dataset.view;
  const sale = body.dataset.sale;
  const $ = (id) => document.getElementById(id);
  const fmt = new Intl.NumberFormat("en-US");
  const HISTORY = 240; // samples kept for the timeline

  function show(id, value, text) {
    const el = $(id);
    el.dataset.value = value === null || value === undefined ? "" : String(value);
    el.textContent = text !== undefined ? text : value === null || value === undefined ? "–" : fmt.format(value);
  }

  function seconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 120) return `${s.toFixed(1)} s`;
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = Math.floor(s % 60);
    return h ? `${h}h ${m}m` : `${m}m ${String(r).padStart(2, "0")}s`;
  }

  function connected(at) {
    $("conn").textContent = "live";
    $("updated").textContent = `updated ${new Date(at * 1000).toLocaleTimeString()}`;
  }

  function stream(url, event, render) {
    const source = new EventSource(url);
    source.addEventListener(event, (e) => render(JSON.parse(e.data)));
    // The server ends each stream after a while; EventSource reconnects by itself.
    source.addEventListener("error", () => { $("conn").textContent = "reconnecting…"; });
  }

  function setPhase(phase, countdown) {
    const el = $("phase");
    el.textContent = phase || "";
    el.className = `phase ${phase || ""}`;
    $("countdown").textContent = countdown
      ? `${countdown.to === "start" ? "opens in" : "closes in"} ${seconds(countdown.seconds)}` : "";
  }

  // --- one sale ---------------------------------------------------------------------------------
  const history = [];

  function renderSale(s) {
    if (s.error) {
      $("conn").textContent = s.message;
      return;
    }
    connected(s.at);
    setPhase(s.phase, s.countdown);
    show("remaining", s.remaining);
    show("stock", s.stock);
    $("bar").style.width = s.stock ? `${(100 * s.remaining) / s.stock}%` : "0";
    show("rate", s.rate, fmt.format(Math.round(s.rate)));
    show("confirmed", s.outcomes.confirmed);
    show("pending", s.outcomes.pending);
    show("compensated", s.outcomes.compensated);
    show("drift", s.drift);
    $("drift-note").textContent = s.settled ? "settled: must be 0" : "in flight while settling";
    $("drift-tile").classList.toggle("alert", s.settled && s.drift !== 0);
    const lag = s.lag.confirmed;
    if (s.settled && lag && lag.n) {
      show("lag", lag.p99, `${seconds(lag.p99)}`);
      $("lag-note").textContent = `p99 over ${fmt.format(lag.n)} · p50 ${seconds(lag.p50)} · max ${seconds(lag.max)}`;
    } else {
      show("lag", s.lag.oldest_pending_s, seconds(s.lag.oldest_pending_s || 0));
      $("lag-note").textContent = "oldest reservation still pending";
    }
    renderCounters(s);
    history.push({ rate: s.rate, remaining: s.remaining, stock: s.stock, lag: s.lag.oldest_pending_s || 0 });
    if (history.length > HISTORY) history.shift();
    drawChart();
  }

  function renderCounters(s) {
    const rows = [];
    for (const [where, counters] of [["Redis", s.redis], ["ledger", s.ledger]]) {
      for (const name of Object.keys(counters).sort()) rows.push([where, name, counters[name]]);
    }
    const tbody = $("counters").tBodies[0];
    tbody.replaceChildren(...rows.map(([where, name, value]) => {
      const tr = document.createElement("tr");
      tr.dataset.counter = `${where}.${name}`;
      for (const text of [where, name, fmt.format(value)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    }));
  }

  function drawChart() {
    const canvas = $("chart");
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, pad = 6;
    ctx.clearRect(0, 0, w, h);
    if (history.length < 2) return;
    const css = getComputedStyle(document.documentElement);
    const span = Math.max(history.length, 60); // fills the width as samples arrive, then scrolls
    const x = (i) => pad + ((w - 2 * pad) * i) / (span - 1);
    const line = (key, max, colour) => {
      ctx.strokeStyle = css.getPropertyValue(colour);
      ctx.lineWidth = 2;
      ctx.beginPath();
      history.forEach((p, i) => {
        const y = h - pad - ((h - 2 * pad) * p[key]) / (max || 1);
        if (i === 0) ctx.moveTo(x(i), y); else ctx.lineTo(x(i), y);
      });
      ctx.stroke();
    };
    line("remaining", history[history.length - 1].stock, "--accent");
    line("rate", Math.max(...history.map((p) => p.rate)), "--ok");
    line("lag", Math.max(...history.map((p) => p.lag)), "--warn");
  }

  // --- the demo buyer -----------------------------------------------------------------------------
  const KEY = "stampede-demo-buyer";

  async function demoBuyer() {
    const kept = JSON.parse(sessionStorage.getItem(KEY) || "null");
    if (kept && kept.expires > Date.now() + 60000) return kept;
    const r = await fetch("/live/demo-token", { method: "POST" });
    if (!r.ok) throw new Error(`no demo buyer (${r.status})`);
    const j = await r.json();
    const me = { buyer: j.buyer, token: j.token, expires: Date.now() + j.expires_in * 1000 };
    sessionStorage.setItem(KEY, JSON.stringify(me));
    return me;
  }

  function idempotencyKey() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  function line(text, cls) {
    const li = document.createElement("li");
    li.textContent = text;
    if (cls) li.className = cls;
    $("mine").append(li);
    return li;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function buy() {
    const button = $("buy");
    button.disabled = true;
    try {
      const me = await demoBuyer();
      const started = performance.now();
      const r = await fetch(`/v1/sales/${encodeURIComponent(sale)}/reservations`, {
        method: "POST",
        headers: { "Authorization": `Bearer ${me.token}`, "Idempotency-Key": idempotencyKey(),
          "Content-Type": "application/json" },
        body: JSON.stringify({ quantity: 1 }),
      });
      const j = await r.json();
      if (r.status !== 202 && r.status !== 200) {
        line(`${me.buyer}: ${j.error.code} (${j.error.message})`, "refused");
        return;
      }
      const item = line(`${me.buyer}: ${j.reservation_id.slice(0, 8)}… pending`, "pending");
      item.dataset.status = "pending";
      item.dataset.reservation = j.reservation_id;
      item.id = "my-reservation";
      for (;;) {
        await sleep(250);
        const q = await fetch(`/v1/reservations/${j.reservation_id}`,
          { headers: { "Authorization": `Bearer ${me.token}` } });
        if (q.status === 429 || q.status === 503) continue;
        const got = await q.json();
        if (got.status === "pending") continue;
        const ms = Math.round(performance.now() - started);
        item.textContent = `${me.buyer}: ${j.reservation_id.slice(0, 8)}… pending → ${got.status}` +
          `${got.reason ? ` (${got.reason})` : ""} after ${ms} ms`;
        item.className = got.status;
        item.dataset.status = got.status;
        return;
      }
    } catch (err) {
      line(String(err.message || err), "refused");
    } finally {
      button.disabled = false;
    }
  }

  // --- the overview -------------------------------------------------------------------------------
  function renderOverview(o) {
    connected(o.at);
    const tbody = $("sales").tBodies[0];
    $("no-sales").hidden = o.sales.length > 0;
    tbody.replaceChildren(...o.sales.map((s) => {
      const tr = document.createElement("tr");
      tr.dataset.sale = s.sale;
      const link = document.createElement("a");
      link.href = `/live/sales/${encodeURIComponent(s.sale)}`;
      link.textContent = s.sale;
      const when = s.countdown
        ? `${s.countdown.to === "start" ? "opens in" : "closes in"} ${seconds(s.countdown.seconds)}`
        : s.window.end ? `ended ${new Date(s.window.end).toLocaleString()}` : "";
      const cells = [link, s.phase, s.remaining, s.stock, s.pending, s.confirmed, when];
      for (const c of cells) {
        const td = document.createElement("td");
        if (c instanceof Node) td.append(c);
        else td.textContent = typeof c === "number" ? fmt.format(c) : c === undefined ? "–" : c;
        tr.append(td);
      }
      return tr;
    }));
  }

  if (view === "sale") {
    document.title = `${sale} · Stampede live`;
    $("title").textContent = sale;
    $("sale-view").hidden = false;
    const demo = body.dataset.demo === "on";
    $("buy-on").hidden = !demo;
    $("buy-off").hidden = demo;
    if (demo) $("buy").addEventListener("click", buy);
    stream(`/live/sales/${encodeURIComponent(sale)}/events`, "sale", renderSale);
  } else {
    $("title").textContent = "all sales";
    $("overview-view").hidden = false;
    stream("/live/events", "sales", renderOverview);
  }
})();
