#!/usr/bin/env python3
"""Restart hand-over benchmark (issue 18): does a UDP stream (or a stream of HTTP batches with
Idempotency-Keys, --transport http) survive pixeld restarts when systemd holds the sockets?

Build first, then run (Python 3.11 standard library only, as root for SO_RCVBUFFORCE):

    cargo build --release && python3 benches/handover.py --rate 20000 --duration 60 --restarts 3

It plays systemd's socket unit: binds the UDP, TCP and HTTP listeners itself (the UDP receive
buffer forced to --rcvbuf, as `ReceiveBuffer=` does; one UDP socket read by every shard, or
with --udp-per-shard one per shard on the same port, as `ReusePort=yes` would), starts `pixeld serve` with them as fds
3-5 and LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID, and keeps them across restarts. `pixeld blast
--transport udp` sends numbered lines (`seq`) at --rate for --duration; meanwhile pixeld is
stopped and started again --restarts times, evenly spaced, with SIGTERM (mode `term`, as
`systemctl restart` does) or SIGKILL (mode `kill9`, a crash and `Restart=on-failure`). At the
end pixeld is stopped cleanly and the log is read back with `pixeld replay`.

Reported per mode: sent (blast), appended (distinct seq in the log), duplicated, missing, the
kernel's UDP drops (SO_RXQ_OVFL, summed over the runs' stop lines), each restart's gap (from the
signal until the next process is ready), and the CPU-seconds of the pixeld processes. Loopback
only; every process is stopped by its PID.
"""
import argparse, json, os, re, signal, socket, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SO_RCVBUFFORCE = 33


def bind_udp(rcvbuf, port, reuse):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if reuse:
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        udp.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    except PermissionError:
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    udp.bind(("127.0.0.1", port))
    return udp


def bind_listeners(rcvbuf, udp_sockets):
    """UDP: one socket, or `udp_sockets` on one port with SO_REUSEPORT (one per shard)."""
    first = bind_udp(rcvbuf, 0, udp_sockets > 1)
    udps = [first] + [bind_udp(rcvbuf, first.getsockname()[1], True) for _ in range(udp_sockets - 1)]
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(4096)
    http = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    http.bind(("127.0.0.1", 0))
    http.listen(4096)
    return udps + [tcp, http]


class Pixeld:
    """One `pixeld serve` on the held sockets; stderr collected by a thread."""

    def __init__(self, binary, data, socks, shards):
        fds = [s.fileno() for s in socks]

        def place():
            high = [os.dup(fd) for fd in fds]
            for i, h in enumerate(high):
                os.dup2(h, 3 + i, inheritable=True)

        names = ":".join(["udp"] * (len(fds) - 2) + ["tcp", "http"])
        env = dict(os.environ, LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names)
        self.p = subprocess.Popen(
            ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', binary, "serve",
             "--data-dir", data, "--shards", str(shards)],
            env=env, preexec_fn=place, close_fds=False,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stderr:
            self.lines.append(line.rstrip())
            if "pixeld: ready" in line:
                self.ready.set()

    def cpu_seconds(self):
        try:
            with open(f"/proc/{self.p.pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return 0.0

    def stop(self, sig):
        cpu = self.cpu_seconds()
        self.p.send_signal(sig)
        self.p.wait(timeout=60)
        time.sleep(0.1)
        drops = sum(int(m.group(1)) for l in self.lines
                    for m in [re.search(r"(\d+) kernel UDP drops", l)] if m)
        return cpu, drops


def run(args, mode):
    binary = os.path.join(ROOT, "target/release/pixeld")
    tmp = tempfile.mkdtemp(prefix="pixeld-handover-")
    data = os.path.join(tmp, "data")
    socks = bind_listeners(args.rcvbuf, args.shards if args.udp_per_shard else 1)
    granted = socks[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    udp_addr = "127.0.0.1:%d" % socks[0].getsockname()[1]
    http_addr = "127.0.0.1:%d" % socks[-1].getsockname()[1]
    px = Pixeld(binary, data, socks, args.shards)
    assert px.ready.wait(60), "\n".join(px.lines)
    if args.transport == "udp":
        how = ["--transport", "udp", "--target", udp_addr]
    else:
        # Batches with an Idempotency-Key each, retried on 503, 409 and broken connections.
        how = ["--transport", "http", "--target", http_addr, "--batch", str(args.batch),
               "--connections", str(args.connections)]
    blast = subprocess.Popen(
        [binary, "blast", *how, "--no-metrics",
         "--rate", str(args.rate), "--duration", f"{args.duration}s", "--seed", "7"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    gaps, cpu, drops = [], 0.0, 0
    every = args.duration / (args.restarts + 1)
    t0 = time.monotonic()
    for r in range(args.restarts):
        time.sleep(max(0.0, t0 + every * (r + 1) - time.monotonic()))
        t = time.monotonic()
        c, d = px.stop(signal.SIGTERM if mode == "term" else signal.SIGKILL)
        cpu, drops = cpu + c, drops + d
        px = Pixeld(binary, data, socks, args.shards)
        assert px.ready.wait(60), "\n".join(px.lines)
        gaps.append(round(time.monotonic() - t, 3))
    out, _ = blast.communicate(timeout=args.duration + 120)
    m = re.search(r"sent (\d+) events", out)
    sent = int(m.group(1)) if m else None
    time.sleep(2)
    c, d = px.stop(signal.SIGTERM)
    cpu, drops = cpu + c, drops + d
    seqs = {}
    rep = subprocess.run([binary, "replay", "--data-dir", data, "--format", "ndjson"],
                         capture_output=True, text=True, check=True)
    for rec in rep.stdout.splitlines():
        line = json.loads(rec).get("line", "")
        m = re.search(r'"seq":(\d+)', line)
        if m:
            n = int(m.group(1))
            seqs[n] = seqs.get(n, 0) + 1
    total = sent or max(seqs, default=0)
    if args.transport == "udp" and args.connections == 1:
        # One sender: it sent exactly seq 1..total.
        missing = sum(1 for n in range(1, total + 1) if n not in seqs)
    else:
        # Several senders share the seq space and stop mid-way at the deadline, so the sent
        # seqs have holes: count what was sent (answered) against what is logged.
        missing = max(0, total - len(seqs))
    doubled = sum(c - 1 for c in seqs.values() if c > 1)
    for s in socks:
        s.close()
    subprocess.run(["rm", "-rf", tmp])
    retries = re.search(r"(\d+) batches retried", out)
    return {"mode": mode, "transport": args.transport, "udp_sockets": len(socks) - 2,
            "http_retries": int(retries.group(1)) if retries else 0,
            "http_batches": (sent or 0) // args.batch if args.transport == "http" else 0, "rate": args.rate, "duration_s": args.duration, "restarts": args.restarts,
            "shards": args.shards, "rcvbuf_granted": granted, "sent": sent, "distinct_logged": len(seqs),
            "missing": missing, "duplicated": doubled, "kernel_drops": drops, "gaps_s": gaps,
            "cpu_s": round(cpu, 2), "blast": next((l for l in out.splitlines() if l.startswith("sent ")), "")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--rcvbuf", type=int, default=32 << 20)
    ap.add_argument("--modes", nargs="+", default=["term", "kill9"])
    ap.add_argument("--transport", choices=["udp", "http"], default="udp",
                    help="udp: datagrams; http: POST /v1/events batches with Idempotency-Keys")
    ap.add_argument("--batch", type=int, default=100, help="events per HTTP batch")
    ap.add_argument("--connections", type=int, default=1, help="HTTP: parallel clients")
    ap.add_argument("--udp-per-shard", action="store_true",
                    help="pass one UDP socket per shard (SO_REUSEPORT) instead of one shared by every shard")
    args = ap.parse_args()
    results = []
    for mode in args.modes:
        r = run(args, mode)
        print(json.dumps(r), flush=True)
        results.append(r)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
