#!/usr/bin/env node
// Load side of the Socket.IO "reconnect storm with connection state recovery" bench.
//
//   node storm.js --url http://127.0.0.1:18130 --clients N --rate R --before S --away D
//                 --after S --mode reset|silent [--silent-close destroy|keep]
//                 [--connect-concurrency 100] [--connect-timeout 60] [--drain 2]
//
// 1. Opens N socket.io-client connections (transports: ["websocket"], one Manager each),
//    at most --connect-concurrency handshakes in flight, and waits until all are connected.
// 2. POST /publish?rate=R on the server (see server.js) and lets it run --before seconds.
// 3. Drops ALL clients at once ("drop time"):
//    reset  - the client's TCP socket (socket.io.engine.transport.ws._socket) is closed with
//             net.Socket#resetAndDestroy(): an RST goes out, the server sees the connection die
//             at once ("transport error"/"transport close"). The client's automatic
//             reconnection is deferred by setting its Manager's reconnectionDelay and
//             reconnectionDelayMax to D s and randomizationFactor to 0 just before the drop, so
//             its first reconnect attempt is D s after the drop.
//    silent - the client stops responding without the server noticing: the TCP socket is
//             paused (no more reads; once Node's read buffer is full it stops reading from the
//             kernel, and the TCP window closes) and corked (nothing is written, so no pong, no
//             close frame, no FIN), and the engine.io client's own ping-timeout timer is
//             cleared. The server keeps sending into the dead connection. D s later the client
//             detaches the ws object from engine.io (so data still sitting in the paused read
//             buffer is thrown away, as a dead client would lose it, instead of being
//             delivered), tells engine.io its transport closed, and:
//               --silent-close destroy (default): destroys the TCP socket locally. On loopback
//                 the kernel then sends a FIN, so the server does learn of the death at this
//                 moment, just before the reconnect (which starts with reconnectionDelay 0).
//               --silent-close keep: leaves the old TCP connection open and untouched until
//                 the end of the run, like a NAT or a host that vanished: the server learns of
//                 it only by its ping timeout (pingInterval + pingTimeout, 45 s by default).
//    Either way every client's first reconnect attempt starts D s after the drop (Socket.IO
//    client's own reconnection, which sends the session id and last offset for recovery).
// 4. Publishing continues --after seconds after that, then POST /stop, then up to --drain
//    seconds for in-flight messages, then prints ONE JSON object on stdout (fields: README.md).
//
// Each client counts receipts per message number (so duplicates and gaps are exact over the
// whole run) and keeps its "contiguous high-water mark" hw (all of 1..hw received) with the time
// each advance happened after the drop. Catch-up (catchup_ms) is measured from the client's
// reconnect start (its first reconnect attempt after the drop) until it holds every message
// published up to that moment, i.e. all i whose publish time t (server's CLOCK_MONOTONIC ns,
// compared with this process's process.hrtime, same clock; taken from the server's GET /times)
// is <= the reconnect start.
// catchup_after_connect_ms is the same with the moment the reconnected socket's "connect" event
// fired instead (Socket.IO writes the replayed packets before the CONNECT packet, so this is
// ~0 for recovered sockets). A client that never gets whole (lost messages) "never caught up".
//
// Every phase is bounded: connect (--connect-timeout), the fixed phases, the drain, and a
// watchdog that exits with code 3 if the whole run takes far longer than planned.
"use strict";

const { io } = require("socket.io-client");

// ---------- arguments ----------
function parseArgs(list) {
  const a = {
    url: null, clients: 100, rate: 20, before: 3, away: 2, after: 5, mode: "reset",
    "silent-close": "destroy", "connect-concurrency": 100, "connect-timeout": 60, drain: 2,
    "server-pid": 0,
  };
  for (let k = 0; k < list.length; k++) {
    const key = list[k].replace(/^--/, "");
    if (!(key in a) || k + 1 >= list.length) fail(`bad argument ${list[k]}`);
    a[key] = list[++k];
  }
  for (const key of ["clients", "rate", "before", "away", "after", "connect-concurrency", "connect-timeout", "drain", "server-pid"]) {
    a[key] = Number(a[key]);
    if (!Number.isFinite(a[key]) || a[key] < 0) fail(`--${key} must be a number >= 0`);
  }
  if (!a.url) fail("--url is required");
  if (!(a.clients >= 1) || !Number.isInteger(a.clients)) fail("--clients must be an integer >= 1");
  if (!(a.rate > 0)) fail("--rate must be > 0");
  if (!["reset", "silent"].includes(a.mode)) fail("--mode must be reset or silent");
  if (!["destroy", "keep"].includes(a["silent-close"])) fail("--silent-close must be destroy or keep");
  return a;
}
function fail(msg) {
  console.error(`storm.js: ${msg}`);
  process.exit(2);
}
const A = parseArgs(process.argv.slice(2));
const base = A.url.replace(/\/+$/, "");

const nowNs = () => Number(process.hrtime.bigint());
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (msg) => console.error(`[storm ${new Date().toISOString().slice(11, 23)}] ${msg}`);

const plannedS = A["connect-timeout"] + A.before + A.away + A.after + A.drain + 30;
setTimeout(() => {
  console.error(`storm.js: watchdog: run exceeded ${plannedS} s, giving up`);
  process.exit(3);
}, plannedS * 1000).unref();

// User plus system CPU seconds of the server process (--server-pid), from /proc; null without it.
const clockTicks = (() => {
  try {
    return Number(require("child_process").execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
  } catch {
    return 100;
  }
})();
function serverCpu() {
  if (!A["server-pid"]) return null;
  const stat = require("fs").readFileSync(`/proc/${A["server-pid"]}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / clockTicks;
}

async function http(method, path) {
  const res = await fetch(base + path, { method, signal: AbortSignal.timeout(30000) });
  const body = await res.json();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(body)}`);
  return body;
}

// ---------- one client ----------
class Client {
  constructor(idx) {
    this.idx = idx;
    this.cnt = new Uint8Array(1024); // receipts per message number (saturates at 255)
    this.hw = 0; // all of 1..hw received
    this.dropped = false; // after the drop, hw advances are logged
    this.hwLogI = [];
    this.hwLogT = [];
    this.tAttempt = null; // first reconnect attempt after the drop
    this.tConnect = null; // first "connect" after the drop
    this.recovered = null; // socket.recovered at that connect
    this.reconnects = 0;
    this.leaked = null; // silent+keep: the old TCP socket
    this.socket = io(base, {
      transports: ["websocket"],
      forceNew: true,
      autoConnect: false,
      timeout: 20000,
    });
    this.mgr = this.socket.io;
    this.socket.on("m", (msg) => this.onMessage(msg));
    this.mgr.on("reconnect_attempt", () => {
      if (this.dropped && this.tAttempt === null) {
        this.tAttempt = nowNs();
        // Later attempts (if the first fails) use Socket.IO's defaults again.
        this.mgr.reconnectionDelay(1000).reconnectionDelayMax(5000).randomizationFactor(0.5);
      }
    });
    this.socket.on("connect", () => {
      if (this.dropped) {
        this.reconnects += 1;
        if (this.tConnect === null) {
          this.tConnect = nowNs();
          this.recovered = this.socket.recovered === true;
        }
      }
    });
  }

  connect() {
    return new Promise((resolve) => {
      const done = (ok, why) => {
        this.socket.off("connect", onOk);
        this.socket.off("connect_error", onErr);
        resolve({ ok, why });
      };
      const onOk = () => done(true);
      const onErr = (e) => done(false, String(e && e.message));
      this.socket.once("connect", onOk);
      this.socket.once("connect_error", onErr);
      this.socket.connect();
    });
  }

  onMessage(msg) {
    const i = msg && msg.i;
    if (!Number.isInteger(i) || i < 1) return;
    if (i >= this.cnt.length) {
      let len = this.cnt.length;
      while (i >= len) len *= 2;
      const c = new Uint8Array(len);
      c.set(this.cnt);
      this.cnt = c;
    }
    if (this.cnt[i] < 255) this.cnt[i] += 1;
    if (i === this.hw + 1) {
      let h = this.hw;
      while (h + 1 < this.cnt.length && this.cnt[h + 1] > 0) h += 1;
      this.hw = h;
      if (this.dropped) {
        this.hwLogI.push(h);
        this.hwLogT.push(nowNs());
      }
    }
  }

  markDropped() {
    this.dropped = true;
    this.tDrop = nowNs();
    this.hwLogI.push(this.hw);
    this.hwLogT.push(this.tDrop);
  }

  dropReset(awayMs) {
    this.markDropped();
    this.mgr.reconnectionDelay(awayMs).reconnectionDelayMax(awayMs).randomizationFactor(0);
    const raw = this.mgr.engine.transport.ws._socket;
    if (typeof raw.resetAndDestroy === "function") raw.resetAndDestroy();
    else raw.destroy();
  }

  dropSilentStart() {
    this.markDropped();
    const engine = this.mgr.engine;
    const ws = engine.transport.ws;
    const raw = ws._socket;
    raw.pause(); // stop reading
    raw.cork(); // hold every write in user space: nothing reaches the wire
    engine.clearTimeoutFn(engine._pingTimeoutTimer); // the client stays silent on its side too
    this.silent = { engine, transport: engine.transport, ws, raw };
  }

  dropSilentEnd(close) {
    const { transport, ws, raw } = this.silent;
    this.mgr.reconnectionDelay(0).reconnectionDelayMax(0).randomizationFactor(0);
    // Detach the ws object so nothing it still holds reaches engine.io.
    ws.onopen = ws.onclose = ws.onmessage = ws.onerror = null;
    ws.on("error", () => {});
    raw.on("error", () => {});
    transport.ws = undefined; // so engine.io's transport.doClose() does not touch it
    if (close === "destroy") raw.destroy();
    else this.leaked = raw;
    // Tell engine.io its transport closed: the Manager then reconnects (delay 0).
    transport.onClose({ description: "bench: silent drop", context: undefined });
    this.silent = null;
  }
}

// ---------- helpers ----------
function pct(values) {
  if (values.length === 0) return { n: 0, p50: null, p99: null, max: null };
  const s = Float64Array.from(values).sort();
  const at = (p) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))];
  const r = (x) => Math.round(x * 1000) / 1000;
  return { n: s.length, p50: r(at(0.5)), p99: r(at(0.99)), max: r(s[s.length - 1]) };
}

// Number of messages published at or before tNs; times[k] = publish time of message k+1
// (from the server's GET /times; non-decreasing, messages are published in order).
function publishedBy(tNs, times) {
  let lo = 0, hi = times.length; // first k with times[k] > tNs
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (times[mid] <= tNs) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// ms from tStart until the client held all of 1..m (null if never).
function catchUpMs(c, m, tStart) {
  for (let k = 0; k < c.hwLogI.length; k++) {
    if (c.hwLogI[k] >= m) return Math.max(0, c.hwLogT[k] - tStart) / 1e6;
  }
  return null;
}

// ---------- the run ----------
async function main() {
  const awayMs = A.away * 1000;
  const clients = Array.from({ length: A.clients }, (_, k) => new Client(k));

  // Connect all, bounded concurrency.
  const t0 = nowNs();
  let next = 0, connected = 0;
  const errors = {};
  const connectDeadline = sleep(A["connect-timeout"] * 1000).then(() => "timeout");
  const worker = async () => {
    while (next < clients.length) {
      const c = clients[next++];
      const r = await c.connect();
      if (r.ok) connected += 1;
      else errors[r.why] = (errors[r.why] || 0) + 1;
    }
  };
  const workers = Array.from({ length: Math.min(A["connect-concurrency"] || 1, clients.length) }, worker);
  const outcome = await Promise.race([Promise.all(workers).then(() => "done"), connectDeadline]);
  const connectMs = (nowNs() - t0) / 1e6;
  if (outcome !== "done" || connected !== A.clients) {
    console.log(JSON.stringify({ error: "not all clients connected", connected, clients: A.clients, connect_errors: errors, connect_ms: connectMs }));
    process.exit(1);
  }
  log(`${connected} clients connected in ${connectMs.toFixed(0)} ms`);

  await http("POST", `/publish?rate=${A.rate}`);
  log(`publishing at ${A.rate}/s; steady for ${A.before} s`);
  // The server's CPU while it only follows the live stream, as loadgen's resume measures it.
  const steadyFrom = Math.min(1, Math.max(0, A.before - 1));
  await sleep(steadyFrom * 1000);
  const steady0 = [serverCpu(), nowNs()];
  await sleep((A.before - steadyFrom) * 1000);
  const steadyCpu = steady0[0] === null ? null : (serverCpu() - steady0[0]) / ((nowNs() - steady0[1]) / 1e9);

  // The server's view shortly before the reconnects start (min(100 ms, D/2) before): shows
  // whether it saw the drop (reset: clients 0) or not (silent: clients still N).
  const peekMs = Math.max(0, awayMs - Math.min(100, awayMs / 2));
  const tDrop = nowNs();
  if (A.mode === "reset") {
    for (const c of clients) c.dropReset(awayMs);
    log(`reset all ${clients.length} TCP sockets; reconnects start in ${A.away} s`);
  } else {
    for (const c of clients) c.dropSilentStart();
    log(`all ${clients.length} clients silent for ${A.away} s`);
  }
  await sleep(peekMs);
  const serverBeforeReconnect = await http("GET", "/stats");
  await sleep(Math.max(0, awayMs - (nowNs() - tDrop) / 1e6));
  if (A.mode === "silent") {
    for (const c of clients) c.dropSilentEnd(A["silent-close"]);
    log(`silent clients closed locally (${A["silent-close"]}); reconnecting`);
  }
  const tAwayEnd = nowNs();
  const stormCpu0 = serverCpu();
  await sleep(A.after * 1000);

  const stop = await http("POST", "/stop");
  const stormCpu = stormCpu0 === null ? null : (serverCpu() - stormCpu0) / ((nowNs() - tAwayEnd) / 1e9);
  const published = stop.sent;
  log(`stopped after ${published} messages; draining up to ${A.drain} s`);
  const drainEnd = Date.now() + A.drain * 1000;
  while (Date.now() < drainEnd && clients.some((c) => c.socket.connected && c.hw < published)) await sleep(20);
  const server = await http("GET", "/stats");
  const times = (await http("GET", "/times")).slice(0, published);

  // ---------- results ----------
  let missingTotal = 0, clientsWithMissing = 0, dupTotal = 0, clientsWithDup = 0;
  let reconnected = 0, recovered = 0, neverCaughtUp = 0, extraReconnects = 0;
  const catchup = [], catchupAfterConnect = [], reconnectMs = [], firstAttemptAfterDropMs = [];
  for (const c of clients) {
    let miss = 0, dup = 0;
    for (let i = 1; i <= published; i++) {
      const n = i < c.cnt.length ? c.cnt[i] : 0;
      if (n === 0) miss += 1;
      else if (n > 1) dup += n - 1;
    }
    missingTotal += miss;
    if (miss > 0) clientsWithMissing += 1;
    dupTotal += dup;
    if (dup > 0) clientsWithDup += 1;
    if (c.tConnect !== null) reconnected += 1;
    if (c.recovered) recovered += 1;
    if (c.reconnects > 1) extraReconnects += c.reconnects - 1;
    const tStart = c.tAttempt !== null ? c.tAttempt : c.tConnect;
    if (c.tAttempt !== null) firstAttemptAfterDropMs.push((c.tAttempt - c.tDrop) / 1e6);
    if (c.tAttempt !== null && c.tConnect !== null) reconnectMs.push((c.tConnect - c.tAttempt) / 1e6);
    const ms = tStart === null ? null : catchUpMs(c, publishedBy(tStart, times), tStart);
    if (ms === null) neverCaughtUp += 1;
    else catchup.push(ms);
    if (c.tConnect !== null) {
      const ms2 = catchUpMs(c, publishedBy(c.tConnect, times), c.tConnect);
      if (ms2 !== null) catchupAfterConnect.push(ms2);
    }
  }
  const out = {
    mode: A.mode,
    silent_close: A.mode === "silent" ? A["silent-close"] : undefined,
    clients: A.clients,
    rate: A.rate,
    before_s: A.before,
    away_s: A.away,
    after_s: A.after,
    connect_ms: Math.round(connectMs),
    published,
    missing_total: missingTotal,
    clients_with_missing: clientsWithMissing,
    duplicates_total: dupTotal,
    clients_with_duplicates: clientsWithDup,
    reconnected,
    recovered,
    extra_reconnects: extraReconnects,
    catchup_ms: pct(catchup),
    never_caught_up: neverCaughtUp,
    catchup_after_connect_ms: pct(catchupAfterConnect),
    reconnect_ms: pct(reconnectMs),
    first_attempt_after_drop_ms: pct(firstAttemptAfterDropMs),
    away_actual_ms: Math.round((tAwayEnd - tDrop) / 1e6),
    server_cpu_steady: steadyCpu,
    server_cpu_in_storm: stormCpu,
    server_before_reconnect: serverBeforeReconnect,
    server,
  };
  console.log(JSON.stringify(out));
  for (const c of clients) if (c.leaked) c.leaked.destroy();
  process.exit(0);
}

main().catch((e) => {
  console.error(`storm.js: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
