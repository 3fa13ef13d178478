"""Kernel and limits tuning for a ringcast host: plan, apply (with revert), check.

The values follow from measured costs (docs/benchmarks.md): an idle connection costs about
4.2 KB of kernel slab on the server side and 146 B of ringcast user space, and holds no
socket-buffer pages; active connections hold buffer pages while data is in flight.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

KERNEL_BYTES_PER_CONN = 4300     # slab per server-side idle connection (TCP, inode, dentry, file, epoll)
USER_BYTES_PER_CONN = 146        # ringcast user space per idle connection
ACTIVE_FRACTION = 0.25           # connections assumed to have data in flight at once
BUFFER_BYTES_PER_ACTIVE = 16384  # socket-buffer bytes such a connection holds
PAGE = 4096


def round_up(n, step):
    return ((int(n) + step - 1) // step) * step


def plan(connections, memory_gb=None):
    """The settings for `connections` connections, as (key, value, why) tuples."""
    if connections < 1:
        raise ValueError("--connections must be at least 1")
    nofile = round_up(connections * 1.1 + 1024, 1000)
    files = [
        ("fs.nr_open", max(nofile, 1048576), "per-process open-file ceiling; must cover nofile"),
        ("fs.file-max", max(2 * nofile, 2097152), "system-wide open files: ringcast plus everything else"),
    ]
    buffer_bytes = connections * ACTIVE_FRACTION * BUFFER_BYTES_PER_ACTIVE
    if memory_gb:
        buffer_bytes = min(buffer_bytes, memory_gb * (1 << 30) * 0.4)
    high = max(round_up(buffer_bytes / PAGE, 1024), 262144)
    net = [
        ("net.core.somaxconn", 65535, "accept queue cap; ringcast asks for --backlog per shard"),
        ("net.ipv4.tcp_max_syn_backlog", 65535, "half-open connections during connect bursts"),
        ("net.core.netdev_max_backlog", 65536, "packets queued per CPU before the stack takes them"),
        ("net.ipv4.tcp_rmem", "4096 16384 4194304", "small default receive buffers; they grow on demand"),
        ("net.ipv4.tcp_wmem", "4096 16384 4194304", "small default send buffers; they grow on demand"),
        ("net.ipv4.tcp_mem", "%d %d %d" % (high // 2, high * 2 // 3, high),
         "TCP buffer pages (low, pressure, high): %d%% of connections with %d KiB in flight"
         % (ACTIVE_FRACTION * 100, BUFFER_BYTES_PER_ACTIVE // 1024)),
        ("net.ipv4.ip_local_port_range", "10240 65535", "load-generator hosts: ~55,000 ports per source address"),
    ]
    return {"connections": connections, "nofile": nofile, "sysctl": files + net,
            "memory_bytes": connections * (KERNEL_BYTES_PER_CONN + USER_BYTES_PER_CONN),
            "memory_gb": memory_gb}


def render_plan(p):
    lines = ["ringcast tuning plan for %d connections" % p["connections"], ""]
    for key, value, why in p["sysctl"]:
        lines.append("  %-32s %-22s # %s" % (key, value, why))
    lines.append("  %-32s %-22s # open files for the ringcast process (limits.d or LimitNOFILE=)" % ("nofile", p["nofile"]))
    lines.append("")
    mem = p["memory_bytes"] / (1 << 30)
    lines.append("Memory for idle connections: %.1f GiB (kernel %.0f B + ringcast %d B each)."
                 % (mem, KERNEL_BYTES_PER_CONN, USER_BYTES_PER_CONN))
    if p["memory_gb"] and mem > p["memory_gb"] * 0.8:
        lines.append("WARNING: that is more than 80%% of the %.0f GiB given; the host is too small." % p["memory_gb"])
    lines.append("Conntrack: if the host tracks connections (a stateful firewall), set "
                 "net.netfilter.nf_conntrack_max >= %d, or exempt the WebSocket port "
                 "(iptables -t raw -A PREROUTING -p tcp --dport 8080 -j NOTRACK)." % round_up(p["connections"] * 1.2, 1000))
    return "\n".join(lines) + "\n"


def sysctl_file(p, scope):
    out = ["# sysctl settings for %d ringcast connections, from tuning/plan (tuning/apply installs them" % p["connections"],
           "# as /etc/sysctl.d/99-ringcast.conf; tuning/apply --revert removes them)."]
    for key, value, why in p["sysctl"]:
        if scope == "net" and not key.startswith("net."):
            continue
        out.append("# %s\n%s = %s" % (why, key, value))
    return "\n".join(out) + "\n"


def limits_file(p):
    return ("# Open files for %d ringcast connections, from tuning/plan (tuning/apply installs this as\n"
            "# /etc/security/limits.d/ringcast.conf; under systemd use LimitNOFILE= instead).\n"
            "* soft nofile %d\n* hard nofile %d\n" % (p["connections"], p["nofile"], p["nofile"]))


def proc_path(key):
    return "/proc/sys/" + key.replace(".", "/")


def read_live(key):
    try:
        with open(proc_path(key)) as f:
            return " ".join(f.read().split())
    except OSError:
        return None


def write_live(key, value):
    with open(proc_path(key), "w") as f:
        f.write(str(value))


def shortfalls(p, scope, nofile_soft=None):
    """Each (key, wanted, live) where the running host falls short of the plan."""
    out = []
    for key, want, _ in p["sysctl"]:
        if scope == "net" and not key.startswith("net."):
            continue
        live = read_live(key)
        if live is None:
            continue  # not in this kernel or network namespace (global keys live in the host's)
        w, l = str(want).split(), live.split()
        if key == "net.ipv4.ip_local_port_range":
            ok = int(l[0]) <= int(w[0]) and int(l[1]) >= int(w[1])
        elif key in ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"):
            ok = int(l[2]) >= int(w[2])  # only the maximum matters for capacity
        else:
            ok = all(int(a) >= int(b) for a, b in zip(l, w))
        if not ok:
            out.append((key, want, live))
    if scope != "net":
        soft = nofile_soft if nofile_soft is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY and soft < p["nofile"]:
            out.append(("nofile (this shell)", p["nofile"], soft))
    return out


class Paths:
    def __init__(self, root):
        self.root = root.rstrip("/") if root else ""
        self.sysctl = self.root + "/etc/sysctl.d/99-ringcast.conf"
        self.limits = self.root + "/etc/security/limits.d/ringcast.conf"
        self.state = self.root + "/var/lib/ringcast-tuning/state.json"


def write_if_changed(path, content, dry_run, log):
    old = None
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if old == content:
        log("unchanged: %s" % path)
        return None
    backup = None
    if old is not None:
        backup = "%s.ringcast-backup-%d" % (path, int(time.time()))
        if not dry_run:
            shutil.copy2(path, backup)
    log("%s %s%s" % ("would write" if dry_run else "wrote", path, " (backup %s)" % backup if backup else ""))
    if not dry_run:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)
    return backup


def apply(p, paths, scope, dry_run, log):
    keys = [(k, v) for k, v, _ in p["sysctl"] if scope != "net" or k.startswith("net.")]
    state = {"files": {}, "live": {}}
    if os.path.exists(paths.state):
        with open(paths.state) as f:
            state = json.load(f)
    for key, _ in keys:
        state["live"].setdefault(key, read_live(key))  # the values before the first apply
    b = write_if_changed(paths.sysctl, sysctl_file(p, scope), dry_run, log)
    state["files"].setdefault(paths.sysctl, b)
    if scope != "net":
        b = write_if_changed(paths.limits, limits_file(p), dry_run, log)
        state["files"].setdefault(paths.limits, b)
    for key, value in keys:
        live = read_live(key)
        if live is None:
            log("skipped %s: not available here (a global key lives in the host's namespace)" % key)
            continue
        if live == " ".join(str(value).split()):
            continue
        log("%s %s = %s" % ("would set" if dry_run else "set", key, value))
        if not dry_run:
            write_live(key, value)
    if not dry_run:
        os.makedirs(os.path.dirname(paths.state), exist_ok=True)
        with open(paths.state, "w") as f:
            json.dump(state, f, indent=1)


def revert(paths, dry_run, log):
    if not os.path.exists(paths.state):
        log("nothing to revert: %s does not exist" % paths.state)
        return
    with open(paths.state) as f:
        state = json.load(f)
    for key, value in state["live"].items():
        if value is not None and read_live(key) != value:
            log("%s %s = %s" % ("would restore" if dry_run else "restored", key, value))
            if not dry_run:
                write_live(key, value)
    for path, backup in state["files"].items():
        if backup and os.path.exists(backup):
            log("%s %s from %s" % ("would restore" if dry_run else "restored", path, backup))
            if not dry_run:
                shutil.move(backup, path)
        elif os.path.exists(path):
            log("%s %s" % ("would remove" if dry_run else "removed", path))
            if not dry_run:
                os.remove(path)
    if not dry_run:
        os.remove(paths.state)


def main(command, argv=None):
    ap = argparse.ArgumentParser(prog="tuning/" + command)
    ap.add_argument("--connections", type=int, default=1000000, help="connections to plan for (default 1,000,000)")
    if command == "plan":
        ap.add_argument("--memory-gb", type=float, help="the host's memory, to size tcp_mem and check the fit")
        ap.add_argument("--format", choices=["text", "sysctl", "limits", "json"], default="text")
    if command in ("apply", "check"):
        ap.add_argument("--scope", choices=["all", "net"], default="all",
                        help="net: only net.* settings (they are per network namespace)")
    if command == "apply":
        ap.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
        ap.add_argument("--revert", action="store_true", help="undo what apply did, from its saved state")
        ap.add_argument("--root", default="", help="prefix for /etc and /var paths (tests)")
    a = ap.parse_args(argv)
    try:
        p = plan(a.connections, getattr(a, "memory_gb", None))
    except ValueError as e:
        print("tuning/%s: %s" % (command, e), file=sys.stderr)
        return 2
    if command == "plan":
        if a.format == "sysctl":
            sys.stdout.write(sysctl_file(p, "all"))
        elif a.format == "limits":
            sys.stdout.write(limits_file(p))
        elif a.format == "json":
            print(json.dumps({"connections": p["connections"], "nofile": p["nofile"],
                              "sysctl": {k: v for k, v, _ in p["sysctl"]}, "memory_bytes": p["memory_bytes"]}, indent=1))
        else:
            sys.stdout.write(render_plan(p))
        return 0
    if command == "check":
        short = shortfalls(p, a.scope)
        for key, want, live in short:
            print("SHORT %-32s wanted %-22s running %s" % (key, want, live))
        print("tuning/check: %s for %d connections" % ("host is ready" if not short else "%d shortfall(s)" % len(short),
                                                         a.connections))
        return 1 if short else 0
    paths = Paths(a.root)
    log = lambda m: print("tuning/apply: " + m)
    try:
        if a.revert:
            revert(paths, a.dry_run, log)
        else:
            apply(p, paths, a.scope, a.dry_run, log)
    except PermissionError as e:
        print("tuning/apply: %s (run as root, or use --dry-run)" % e, file=sys.stderr)
        return 1
    return 0
