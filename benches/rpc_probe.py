#!/usr/bin/env python3
"""One WebSocket client making sequential RPCs through ringcast, timing each reply.

    rpc_probe.py HOST:PORT CALLS [METHOD]

Prints one JSON object: the replies by error code (or "data"), and latency percentiles (ms)
from send to reply. Used by benches/rpc.sh to time refusals while a backend's breaker is open.
"""
import base64, json, os, socket, struct, sys, time

def frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x81])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

class Conn:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(65536)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.recv()  # welcome

    def need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def recv(self):
        while True:
            self.need(2)
            op, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
            at = 2
            if n == 126:
                self.need(4); n = struct.unpack(">H", self.buf[2:4])[0]; at = 4
            elif n == 127:
                self.need(10); n = struct.unpack(">Q", self.buf[2:10])[0]; at = 10
            self.need(at + n)
            payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
            if op == 1:
                return json.loads(payload)

def main():
    addr, calls = sys.argv[1], int(sys.argv[2])
    method = sys.argv[3] if len(sys.argv) > 3 else "bench.echo"
    c = Conn(addr)
    took, kinds = [], {}
    for i in range(calls):
        t = time.perf_counter()
        c.s.sendall(frame(json.dumps({"type": "rpc", "id": i, "method": method, "data": i}).encode()))
        while True:
            r = c.recv()
            if r.get("type") == "reply" and r.get("id") == i:
                break
        took.append((time.perf_counter() - t) * 1000)
        k = r["error"]["code"] if "error" in r else "data"
        kinds[k] = kinds.get(k, 0) + 1
        time.sleep(0.01)
    took.sort()
    pick = lambda q: round(took[min(len(took) - 1, int(len(took) * q))], 3)
    print(json.dumps({"calls": calls, "replies": kinds, "latency_ms": {"p50": pick(0.5), "p99": pick(0.99), "max": round(took[-1], 3)}}))

main()
