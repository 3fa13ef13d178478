#!/usr/bin/env node
// Socket.IO 4 comparison peer for the "reconnect storm with connection state recovery" bench.
//
//   node server.js PORT [--ping-interval MS] [--ping-timeout MS] [--max-disconnection MS]
//
// Listens on 127.0.0.1:PORT (only there). One HTTP server carries both Socket.IO (path
// /socket.io/, WebSocket transport only) and three tiny control endpoints:
//
//   POST /publish?rate=R[&n=N]  start publishing: message i = 1, 2, ... is sent as
//                               io.to("bench").emit("m", {i, t}) on a fixed schedule of R per
//                               second (message i is due at start + (i-1)/R s; if the event loop
//                               is late, the due messages are sent back to back). t is the
//                               publish time in ns from process.hrtime.bigint() (CLOCK_MONOTONIC,
//                               so it compares with the same clock in storm.js on this machine).
//                               Stops by itself after N messages if n is given (n=0 or absent:
//                               until POST /stop). Resets the message counter to 0 first, so a
//                               run's messages are numbered from 1. 409 if already publishing.
//   POST /stop                  stop publishing; answers the final stats.
//   GET  /times                 JSON array: element k is the publish time t (ns) of message k+1 in
//                               this run (storm.js uses it to know what was published when, also
//                               for messages that no client received).
//   GET  /stats                 JSON {clients, sent, publishing, connections, recovered,
//                               disconnect_reasons}: clients = Socket.IO sockets connected now,
//                               sent = messages emitted so far in this run, connections = all
//                               "connection" events since start, recovered = how many of them were
//                               recovered sessions (socket.recovered), disconnect_reasons = count
//                               of server-side "disconnect" reasons since start.
//
// connectionStateRecovery is on (maxDisconnectionDuration 120000 ms by default, skipMiddlewares
// true). Every new (not recovered) socket joins the room "bench"; a recovered socket gets its
// rooms back from the session and is not joined again. Socket.IO keeps a session only when the
// server sees the disconnect with a recoverable reason ("transport close", "transport error",
// "ping timeout", ...), and only from that moment on: a client that reconnects while the server
// still holds its old, silently dead connection is NOT recovered (the session is stored only
// when the old connection is finally noticed dead, by ping timeout: pingInterval + pingTimeout,
// 25000 + 20000 ms by default; use --ping-interval/--ping-timeout to change them).
//
// Runs until killed (SIGINT/SIGTERM); run it under `timeout`.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

function usage(msg) {
  if (msg) console.error(msg);
  console.error("usage: node server.js PORT [--ping-interval MS] [--ping-timeout MS] [--max-disconnection MS]");
  process.exit(2);
}

const argv = process.argv.slice(2);
const port = Number(argv[0]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) usage("PORT must be 1-65535");
const opt = { pingInterval: 25000, pingTimeout: 20000, maxDisconnection: 120000 };
for (let k = 1; k < argv.length; k += 2) {
  const v = Number(argv[k + 1]);
  if (!Number.isFinite(v) || v < 0) usage(`bad value for ${argv[k]}`);
  if (argv[k] === "--ping-interval") opt.pingInterval = v;
  else if (argv[k] === "--ping-timeout") opt.pingTimeout = v;
  else if (argv[k] === "--max-disconnection") opt.maxDisconnection = v;
  else usage(`unknown option ${argv[k]}`);
}

const state = {
  sent: 0,
  times: [], // times[k] = t of message k+1
  publishing: false,
  timer: null,
  connections: 0,
  recovered: 0,
  disconnectReasons: {},
};

function stats() {
  return {
    clients: io.of("/").sockets.size,
    sent: state.sent,
    publishing: state.publishing,
    connections: state.connections,
    recovered: state.recovered,
    disconnect_reasons: state.disconnectReasons,
  };
}

function stopPublishing() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
  state.publishing = false;
}

function startPublishing(rate, n) {
  state.sent = 0;
  state.times = [];
  state.publishing = true;
  const start = process.hrtime.bigint();
  const periodNs = 1e9 / rate;
  const tick = () => {
    const now = process.hrtime.bigint();
    // Message i is due at start + (i-1) * period.
    let due = Math.floor(Number(now - start) / periodNs) + 1;
    if (n > 0 && due > n) due = n;
    while (state.sent < due) {
      state.sent += 1;
      const t = Number(process.hrtime.bigint());
      state.times.push(t);
      io.to("bench").emit("m", { i: state.sent, t });
    }
    if (n > 0 && state.sent >= n) {
      stopPublishing();
      return;
    }
    const nextDueNs = state.sent * periodNs; // offset of message sent+1 from start
    const waitMs = Math.max(0, (nextDueNs - Number(process.hrtime.bigint() - start)) / 1e6);
    state.timer = setTimeout(tick, waitMs);
  };
  tick();
}

function reply(res, code, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(code, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

const httpServer = http.createServer((req, res) => {
  // Socket.IO answers its own path (/socket.io/) before this handler is reached.
  const url = new URL(req.url, "http://127.0.0.1");
  req.resume(); // bodies are ignored
  if (req.method === "GET" && url.pathname === "/stats") return reply(res, 200, stats());
  if (req.method === "GET" && url.pathname === "/times") return reply(res, 200, state.times);
  if (req.method === "POST" && url.pathname === "/publish") {
    const rate = Number(url.searchParams.get("rate"));
    const n = Number(url.searchParams.get("n") || 0);
    if (!(rate > 0) || !Number.isInteger(n) || n < 0) return reply(res, 400, { error: "need rate>0 and integer n>=0" });
    if (state.publishing) return reply(res, 409, { error: "already publishing" });
    startPublishing(rate, n);
    return reply(res, 200, { started: true, rate, n });
  }
  if (req.method === "POST" && url.pathname === "/stop") {
    stopPublishing();
    return reply(res, 200, stats());
  }
  reply(res, 404, { error: "not found" });
});

const io = new Server(httpServer, {
  transports: ["websocket"],
  pingInterval: opt.pingInterval,
  pingTimeout: opt.pingTimeout,
  connectionStateRecovery: {
    maxDisconnectionDuration: opt.maxDisconnection,
    skipMiddlewares: true,
  },
});

io.on("connection", (socket) => {
  state.connections += 1;
  if (socket.recovered) state.recovered += 1;
  else socket.join("bench");
  socket.on("disconnect", (reason) => {
    state.disconnectReasons[reason] = (state.disconnectReasons[reason] || 0) + 1;
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  console.error(
    `socket.io ${require("socket.io/package.json").version} listening on 127.0.0.1:${port} ` +
      `(pingInterval ${opt.pingInterval} ms, pingTimeout ${opt.pingTimeout} ms, ` +
      `maxDisconnectionDuration ${opt.maxDisconnection} ms)`,
  );
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    stopPublishing();
    io.close();
    process.exit(0);
  });
}
