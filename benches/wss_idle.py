#!/usr/bin/env python3
"""User-space RSS per idle wss connection against plain ws, in one run.

Starts ringcast (one shard, pinned to core 0) with a plain listener and a TLS listener (a
self-signed ECDSA P-256 certificate made with openssl); pinned to core 1, opens N plain
connections, holds them 2 s and reads the server's RSS; then does the same over TLS 1.3 with a
fresh server. Prints RSS per connection for each, (RSS with N idle connections - RSS before)
/ N, and the server's CPU time. Bounded: every step has a timeout. The client is CPython's
asyncio and ssl, so the time to open the connections is the client's, not a handshake rate.

    benches/wss_idle.py [N] [ec|rsa]     # default 15000 ec
"""
import asyncio, os, ssl, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 15000
KEY = sys.argv[2] if len(sys.argv) > 2 else "ec"  # ec (ECDSA P-256) or rsa (RSA-2048)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/ringcast")
PORT, TLS_PORT, API = 18190, 18191, 18192
REQ = (b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def one(port, ctx, source, conns, sem):
    async with sem:
        r, w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, local_addr=(source, 0),
                                    server_hostname="localhost" if ctx else None), 30)
        w.write(REQ)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 101"), head
        await asyncio.wait_for(r.read(1), 30)  # the welcome's first byte: fully open
        conns.append((r, w))


async def hold(pid, port, ctx, sources):
    conns, sem = [], asyncio.Semaphore(256)
    t0 = time.time()
    await asyncio.gather(*(one(port, ctx, sources[i % len(sources)], conns, sem) for i in range(N)))
    took = time.time() - t0
    await asyncio.sleep(2)
    used = rss(pid)
    for _, w in conns:
        w.close()
    await asyncio.sleep(2)
    return used, took


def main():
    d = tempfile.mkdtemp()
    crt, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if KEY == "ec" else ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", *newkey,
                    "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    os.sched_setaffinity(0, {1})
    ctx = ssl.create_default_context(cafile=crt)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    print(f"N={N}")
    # A fresh server for each, so neither run's memory is reused by the other.
    for name, port, c, sources in [("ws ", PORT, None, ["127.0.0.2", "127.0.0.3"]),
                                    ("wss", TLS_PORT, ctx, ["127.0.0.4", "127.0.0.5"])]:
        srv = subprocess.Popen(["taskset", "-c", "0", BIN, "--listen", f"127.0.0.1:{PORT}",
                                "--api-listen", f"127.0.0.1:{API}", "--tls-listen", f"127.0.0.1:{TLS_PORT}",
                                "--tls-cert", crt, "--tls-key", key, "--shards", "1", "--log-level", "warn",
                                "--max-connections", str(N + 100)])
        try:
            time.sleep(1)
            # taskset execs ringcast in place, so the pid is the server's.
            base = rss(srv.pid)
            used, took = asyncio.run(hold(srv.pid, port, c, sources))
            cpu = sum(int(x) for x in open(f"/proc/{srv.pid}/stat").read().split(")")[1].split()[11:13]) / os.sysconf("SC_CLK_TCK")
            print(f"{name}: {(used - base) / N:7.0f} B/conn idle  (RSS before {base/1e6:.1f} MB; "
                  f"opened in {took:.1f} s; server CPU {cpu:.2f} s, {N / cpu:.0f} upgrades per server CPU-s; key {KEY})")
        finally:
            srv.terminate()
            srv.wait(timeout=30)


main()
