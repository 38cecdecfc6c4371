#!/usr/bin/env python3
"""What one live-update message costs rush, in CPU: the fan-out alone.

    loadtest/fanout-cost.py PID URL [--subscribers N] [--seconds S]
    loadtest/fanout-cost.py 0 URL --hold-only S [--subscribers N]

Against a running `rush serve` (PID, URL: dev tokens on, rate limits off),
on one watched event changed ten times a second (a hold, cancelled half a
second later), it measures rush's CPU (utime + stime from /proc) over S
seconds twice, without streams and with N idle streams open (each read as
it arrives, in this process, with epoll), and prints the messages
delivered and rush's CPU per message: (with - without) / messages.

With --hold-only it opens the N streams, reads nothing after their first
bytes, keeps the watched event changing for S seconds and exits: rush's
fan-out runs at its bound while a load test runs beside it, and the load
generator carries no subscribers of its own.
"""

import argparse
import http.client
import json
import os
import select
import socket
import threading
import time


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def call(host, port, method, path, token=None, body=None):
    c = http.client.HTTPConnection(host, port, timeout=10)
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, (json.loads(data) if data else None)


def token(host, port, user, role):
    s, v = call(host, port, "POST", "/v1/auth/dev-token", body={"user_id": user, "role": role})
    assert s == 200, (s, v)
    return v["token"]


def churn(host, port, event, tok, stop, stats):
    """Ten changes a second: twenty holds, then their twenty cancels (a
    hold right after a cancel would take the seat just freed, and a read
    between the two would see nothing changed)."""
    held, holding, n = [], True, 0
    body = {"event_id": event, "category": "a", "quantity": 1}
    while not stop.is_set():
        t = time.monotonic()
        holding = (holding and len(held) < 20) or not held
        if holding:
            buyer = tok[n % len(tok)]
            n += 1
            s, v = call(host, port, "POST", "/v1/orders", buyer, body)
            if s == 201:
                held.append((buyer, v["order_id"]))
        else:
            buyer, order = held.pop(0)
            s, _ = call(host, port, "POST", f"/v1/orders/{order}/cancel", buyer)
        stats[s] = stats.get(s, 0) + 1
        time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pid", type=int)
    ap.add_argument("url")
    ap.add_argument("--subscribers", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--hold-only", type=float, default=None)
    a = ap.parse_args()
    host, port = a.url.removeprefix("http://").rstrip("/").split(":")
    port = int(port)
    run = f"fanout{os.getpid()}{int(time.time())}"
    admin = token(host, port, f"{run}-admin", "admin")
    # Five buyers: twenty seats held at once, within the per-user limit.
    buyers = [token(host, port, f"{run}-buyer{i}", "user") for i in range(5)]
    watcher = token(host, port, f"{run}-watcher", "user")
    s, v = call(host, port, "POST", "/v1/admin/events", admin, {
        "name": run, "venue": "fanout", "starts_at": "2030-01-01T20:00:00Z",
        "categories": [{"id": "a", "name": "A", "price": 100}],
        "layout": {"sections": [{"name": "W", "rows": 10, "cols": 10, "category": "a"}]},
    })
    assert s == 201, (s, v)
    event = v["event_id"]

    stop = threading.Event()
    holds = {}
    churner = threading.Thread(target=churn, args=(host, port, event, buyers, stop, holds), daemon=True)
    churner.start()
    if a.hold_only is not None:
        req = f"GET /v1/events/{event}/stream HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {watcher}\r\n\r\n"
        held = []
        for _ in range(a.subscribers):
            so = socket.create_connection((host, port))
            so.sendall(req.encode())
            held.append(so)
        print(f"{len(held)} streams open, holding them {a.hold_only} s", flush=True)
        time.sleep(a.hold_only)
        stop.set()
        return
    time.sleep(2)
    c0 = cpu_s(a.pid)
    time.sleep(a.seconds)
    without = cpu_s(a.pid) - c0

    ep = select.epoll()
    socks = {}
    req = f"GET /v1/events/{event}/stream HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {watcher}\r\n\r\n".encode()
    for _ in range(a.subscribers):
        so = socket.create_connection((host, port))
        so.sendall(req)
        so.setblocking(False)
        socks[so.fileno()] = so
        ep.register(so.fileno(), select.EPOLLIN)
    counted = {"changes": 0, "bytes": 0, "on": False}

    def reader():
        while not stop.is_set():
            for fd, _ in ep.poll(0.2):
                try:
                    data = socks[fd].recv(65536)
                except BlockingIOError:
                    continue
                counted["bytes"] += len(data)
                if counted["on"]:
                    counted["changes"] += data.count(b"event: changes")
    rt = threading.Thread(target=reader, daemon=True)
    rt.start()
    # Snapshots in, then a few rounds before measuring.
    time.sleep(max(5.0, a.subscribers / 1000))
    counted["on"] = True
    c0 = cpu_s(a.pid)
    time.sleep(a.seconds)
    with_subs = cpu_s(a.pid) - c0
    counted["on"] = False
    msgs = counted["changes"]
    stop.set()
    for so in socks.values():
        so.close()
    per = (with_subs - without) / msgs * 1e6 if msgs else float("nan")
    print(json.dumps({
        "subscribers": a.subscribers, "seconds": a.seconds,
        "rush_cpu_s_without": round(without, 2), "rush_cpu_s_with": round(with_subs, 2),
        "messages": msgs, "bytes": counted["bytes"], "holds": holds, "messages_per_s": round(msgs / a.seconds),
        "rush_cpu_us_per_message": round(per, 1),
    }))


if __name__ == "__main__":
    main()
