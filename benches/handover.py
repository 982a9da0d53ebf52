#!/usr/bin/env python3
"""Restart hand-over benchmark (issue 18): does a UDP stream (or a stream of HTTP batches with
Idempotency-Keys, --transport http, or a TCP relay, --transport tcp) survive pixeld restarts
when systemd holds the sockets?

Build first, then run (Python 3.11 standard library only, as root for SO_RCVBUFFORCE):

    cargo build --release && python3 benches/handover.py --rate 20000 --duration 60 --restarts 3

It plays systemd's socket unit: binds the UDP, TCP and HTTP listeners itself (the UDP receive
buffer forced to --rcvbuf, as `ReceiveBuffer=` does; one UDP socket read by every shard, or
with --udp-per-shard one per shard on the same port, as `ReusePort=yes` would), starts `pixeld serve` with them as fds
3-5 and LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID, and keeps them across restarts. `pixeld blast`
sends numbered lines (`seq`) at --rate for --duration (or --batches HTTP batches); meanwhile
pixeld is stopped and started again --restarts times, evenly spaced, with SIGTERM (mode
`term`, as `systemctl restart` does) or SIGKILL (mode `kill9`, a crash and
`Restart=on-failure`). A pixeld that exits by itself (the `abort` fault of --faults) is started
again at once, as `Restart=on-failure` would. At the end pixeld is stopped cleanly and the log
is read back with `pixeld replay`.

--transport http: `POST /v1/events` batches of --batch lines, each with an Idempotency-Key,
retried by blast on 503, 409 and broken or refused connections. --faults passes
PIXELD_TEST_HTTP_FAULTS to pixeld (needs a build with `--features fault-injection`, see
--binary), e.g. the issue's 10 000 batches with random failures:

    cargo build --release --no-default-features --features fault-injection
    python3 benches/handover.py --transport http --batches 10000 --batch 20 --rate 4000 \\
        --connections 8 --restarts 3 --modes kill9 \\
        --faults 503:0.05,503-prefix:0.05,reset:0.05,abort:0.002

--transport tcp: a relay, `pixeld blast --transport tcp` on one connection (--connections),
which peeks for pixeld's FIN before each write and then reconnects (as rsyslog's omfwd does),
and reconnects after a broken write, sending that write again. Right before each SIGKILL the
kernel's queues of the relay's connections are read from /proc/net/tcp: the bytes pixeld's
kernel had acknowledged but pixeld had not read (rx_queue) and those the relay's kernel still
held (tx_queue), to explain what the kill loses.

Reported per mode: sent (blast), distinct seqs logged, missing (seq 1..sent absent from the
log, when one sender or --batches makes the sent seqs contiguous), doubled, the kernel's UDP
drops (the sockets' own counts, summed over the runs' stop lines), each restart's gap (from the signal
until the next process is ready), the crashes restarted, blast's retry and reconnect counts,
and the CPU-seconds of the pixeld processes. Loopback only; every process is stopped by its PID.
"""
import argparse, json, os, re, signal, socket, subprocess, sys, tempfile, threading, time
import urllib.request

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

    def __init__(self, binary, data, socks, shards, extra_env):
        fds = [s.fileno() for s in socks]

        def place():
            high = [os.dup(fd) for fd in fds]
            for i, h in enumerate(high):
                os.dup2(h, 3 + i, inheritable=True)

        names = ":".join(["udp"] * (len(fds) - 2) + ["tcp", "http"])
        env = dict(os.environ, LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names, **extra_env)
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

    def recovered(self):
        """Each shard's log end at this process's start ("shard N recovered: … next offset O")."""
        return {int(m.group(1)): int(m.group(2)) for l in self.lines
                for m in [re.search(r"shard (\d+) recovered: .*next offset (\d+)", l)] if m}

    def drops(self):
        return sum(int(m.group(1)) for l in self.lines
                   for m in [re.search(r"(\d+) kernel UDP drops", l)] if m)

    def stop(self, sig):
        cpu = self.cpu_seconds()
        self.p.send_signal(sig)
        self.p.wait(timeout=60)
        time.sleep(0.1)
        return cpu, self.drops()


def server_side_open(port):
    """Whether a connection accepted on `port` is still established on pixeld's side (a
    killed process's sockets are closed only once io_uring's teardown lets them go)."""
    with open("/proc/net/tcp") as f:
        next(f)
        return any(int(c[1].split(":")[1], 16) == port and c[3] == "01"
                   for c in (row.split() for row in f))


def tcp_queues(port):
    """The relay's connections to pixeld's TCP `port`, from /proc/net/tcp: bytes queued for
    pixeld to read (its side's rx_queue) and bytes the relay's kernel has not had acknowledged
    (the relay's side's tx_queue)."""
    rx = tx = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for row in f:
            c = row.split()
            local, remote, state = c[1], c[2], c[3]
            if state != "01":  # ESTABLISHED
                continue
            t, r = (int(x, 16) for x in c[4].split(":"))
            if int(local.split(":")[1], 16) == port:
                rx += r
            elif int(remote.split(":")[1], 16) == port:
                tx += t
    return rx, tx


RSYSLOG_CONF = """
global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{listen}" ruleset="relay")
template(name="asreceived" type="string" string="%rawmsg%")
ruleset(name="relay") {{
  action(type="omfwd" target="127.0.0.1" port="{pixeld}" protocol="tcp"
         TCP_Framing="octet-counted" template="asreceived"
         action.resumeRetryCount="-1" action.resumeInterval="1"
         queue.type="LinkedList" queue.size="5000000" queue.dequeueBatchSize="1024")
}}
"""


class Rsyslog:
    """rsyslogd as the relay (--relay rsyslog): imtcp takes blast's lines, omfwd forwards each
    as it was received, octet-counted, to pixeld's TCP port through an in-memory action queue,
    retrying forever (every second while suspended). Its omfwd peeks for a FIN before each
    send (CheckConnection) and reconnects."""

    def __init__(self, tmp, pixeld_port):
        work = os.path.join(tmp, "rsyslog")
        os.makedirs(work)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        conf = os.path.join(work, "rsyslog.conf")
        with open(conf, "w") as f:
            f.write(RSYSLOG_CONF.format(work=work, listen=self.port, pixeld=pixeld_port))
        self.p = subprocess.Popen(["rsyslogd", "-n", "-f", conf, "-i", os.path.join(work, "pid")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        threading.Thread(target=lambda: self.lines.extend(l.rstrip() for l in self.p.stderr),
                         daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.p.poll() is None, "\n".join(self.lines)
                time.sleep(0.05)
        raise AssertionError("rsyslogd does not listen: " + "\n".join(self.lines))

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=60)


def wait_quiet(http_addr, quiet=3.0, limit=300):
    """Waits until pixeld's TCP intake has not moved for `quiet` s (the relay's queue is empty)."""
    last, since, deadline = None, time.monotonic(), time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{http_addr}/metrics", timeout=5) as r:
                text = r.read().decode()
            now = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                      if l.startswith('pixeld_received_events_total{transport="tcp"}'))
        except OSError:
            now = None
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.2)


class Keeper:
    """The running pixeld, started again at once when it exits by itself (`abort`), as
    `Restart=on-failure` would, and restarted on request (SIGTERM or SIGKILL)."""

    def __init__(self, binary, data, socks, shards, env):
        self.args = (binary, data, socks, shards, env)
        self.lock = threading.Lock()
        self.cpu, self.drops, self.crashes, self.crash_gaps = 0.0, 0, 0, []
        self.stopping = False
        self.px = self._start()
        self.log = []
        threading.Thread(target=self._watch, daemon=True).start()

    def _start(self):
        px = Pixeld(*self.args)
        assert px.ready.wait(120), "\n".join(px.lines)
        return px

    def _watch(self):
        while not self.stopping:
            time.sleep(0.005)
            with self.lock:
                if self.stopping or self.px.p.poll() is None:
                    continue
                t = time.monotonic()
                self.drops += self.px.drops()
                self.log += self.px.lines
                self.crashes += 1
                self.px = self._start()
                self.crash_gaps.append(round(time.monotonic() - t, 3))

    def restart(self, sig, before_kill=None):
        with self.lock:
            t = time.monotonic()
            if before_kill:
                before_kill(self.px)
            c, d = self.px.stop(sig)
            self.cpu, self.drops = self.cpu + c, self.drops + d
            self.log += self.px.lines
            self.px = self._start()
            return round(time.monotonic() - t, 3)

    def stop(self):
        with self.lock:
            self.stopping = True
            c, d = self.px.stop(signal.SIGTERM)
            self.cpu, self.drops = self.cpu + c, self.drops + d
            self.log += self.px.lines


def missing_ranges(seqs, total):
    """The runs of seq 1..total absent from `seqs`, as (first, last)."""
    out, start = [], None
    for n in range(1, total + 2):
        if n <= total and n not in seqs:
            start = n if start is None else start
        elif start is not None:
            out.append((start, n - 1))
            start = None
    return out


def run(args, mode):
    tmp = tempfile.mkdtemp(prefix="pixeld-handover-")
    data = os.path.join(tmp, "data")
    socks = bind_listeners(args.rcvbuf, args.shards if args.udp_per_shard else 1)
    granted = socks[0].getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    udp_addr = "127.0.0.1:%d" % socks[0].getsockname()[1]
    tcp_port = socks[-2].getsockname()[1]
    http_addr = "127.0.0.1:%d" % socks[-1].getsockname()[1]
    env = {"PIXELD_TEST_HTTP_FAULTS": args.faults} if args.faults else {}
    keeper = Keeper(args.binary, data, socks, args.shards, env)
    duration = args.duration
    relay = None
    if args.transport == "udp":
        how = ["--transport", "udp", "--target", udp_addr]
    elif args.transport == "tcp":
        relay = Rsyslog(tmp, tcp_port) if args.relay == "rsyslog" else None
        target = relay.port if relay else tcp_port
        how = ["--transport", "tcp", "--target", "127.0.0.1:%d" % target,
               "--connections", str(args.connections)]
    else:
        # Batches with an Idempotency-Key each, retried on 503, 409 and broken connections.
        how = ["--transport", "http", "--target", http_addr, "--batch", str(args.batch),
               "--connections", str(args.connections)]
    if args.batches:
        # Exactly --batches batches: seq 1..batches*batch, whatever the pacing.
        how += ["--count", str(args.batches * args.batch)]
        duration = args.batches * args.batch / args.rate
    else:
        how += ["--duration", f"{args.duration}s"]
    blast = subprocess.Popen(
        [args.binary, "blast", *how, "--no-metrics", "--json",
         "--rate", str(args.rate), "--seed", "7"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    gaps, kills = [], []

    def snapshot(px):
        """--freeze-at-kill (TCP): the state at a SIGKILL, frozen. Reads how many lines pixeld
        has taken in (/metrics), stops pixeld and the relay (SIGSTOP), reads the relay's
        connections' kernel queues once they have settled, kills pixeld, waits until its
        sockets are gone (the kernel closes them only after io_uring's teardown, some ms after
        the process is reaped; what a relay writes meanwhile is lost with the reset), and lets
        the relay go on. So a kill loses exactly: what pixeld had read but not made durable,
        what its kernel held unread, what the relay's kernel held unacknowledged."""
        if args.transport != "tcp" or not args.freeze_at_kill:
            return
        with urllib.request.urlopen(f"http://{http_addr}/metrics", timeout=5) as r:
            text = r.read().decode()
        # Lines taken in (appended to the log's memory: none is dropped here);
        # pixeld_appended_events_total counts them only once written.
        taken = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                    if l.startswith('pixeld_received_events_total{transport="tcp"}'))
        sender = relay.p.pid if relay else blast.pid
        os.kill(px.p.pid, signal.SIGSTOP)
        os.kill(sender, signal.SIGSTOP)
        time.sleep(0.1)
        rx, tx = tcp_queues(tcp_port)
        keeper.cpu += px.cpu_seconds()
        px.p.kill()
        px.p.wait(timeout=60)
        deadline = time.monotonic() + 5
        while server_side_open(tcp_port) and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(sender, signal.SIGCONT)
        kills.append({"start": px.recovered(), "taken": int(taken), "rx": rx, "tx": tx})

    every = duration / (args.restarts + 1)
    t0 = time.monotonic()
    for r in range(args.restarts):
        time.sleep(max(0.0, t0 + every * (r + 1) - time.monotonic()))
        if blast.poll() is not None:
            break
        sig = signal.SIGTERM if mode == "term" else signal.SIGKILL
        gaps.append(keeper.restart(sig, snapshot if mode == "kill9" else None))
        if kills and "end" not in kills[-1]:
            # The next process's log end: what the killed one had made durable.
            kills[-1]["end"] = keeper.px.recovered()
    out, _ = blast.communicate(timeout=duration * 3 + 300)
    report = next((json.loads(l) for l in reversed(out.splitlines()) if l.startswith("{")), None)
    assert report is not None, out
    sent = report["sent"]
    time.sleep(2)
    if relay:
        wait_quiet(http_addr)
        relay.stop()
    keeper.stop()
    seqs = {}
    rep = subprocess.run([args.binary, "replay", "--data-dir", data, "--format", "ndjson"],
                         capture_output=True, text=True, check=True)
    line_bytes = 0
    for rec in rep.stdout.splitlines():
        line = json.loads(rec).get("line", "")
        m = re.search(r'"seq":(\d+)', line)
        if m:
            n = int(m.group(1))
            seqs[n] = seqs.get(n, 0) + 1
            line_bytes += len(line) + 1
    contiguous = args.batches or args.connections == 1
    total = args.batches * args.batch if args.batches else sent
    if contiguous:
        # One sender (or a fixed count): it sent exactly seq 1..total.
        gaps_seq = missing_ranges(seqs, total)
        missing = sum(b - a + 1 for a, b in gaps_seq)
    else:
        # Several senders share the seq space and stop mid-way at the deadline, so the sent
        # seqs have holes: count what was sent (answered) against what is logged.
        gaps_seq = []
        missing = max(0, total - len(seqs))
    doubled = sum(c - 1 for c in seqs.values() if c > 1)
    for s in socks:
        s.close()
    subprocess.run(["rm", "-rf", tmp])
    avg = line_bytes / max(1, sum(seqs.values()))
    out = {"mode": mode, "transport": args.transport, "shards": args.shards,
           "rate": args.rate, "duration_s": round(duration, 1), "restarts": len(gaps),
           "sent": sent, "distinct_logged": len(seqs), "missing": missing, "duplicated": doubled,
           "gaps_s": gaps, "crash_restarts": keeper.crashes, "crash_gaps_s": keeper.crash_gaps,
           "cpu_s": round(keeper.cpu, 2)}
    if args.transport == "udp":
        out.update({"udp_sockets": len(socks) - 2, "rcvbuf_granted": granted,
                    "kernel_drops": keeper.drops})
    if args.transport == "http":
        out.update({"batches": (args.batches or sent // args.batch), "faults": args.faults,
                    "http_retries": report.get("http_retries", 0),
                    "http_retry_causes": report.get("http_retry_causes", {}),
                    "http_refused_events": report.get("http_refused_events", 0),
                    "fault_aborts_logged": sum("PIXELD_TEST_HTTP_FAULTS: aborting" in l
                                               for l in keeper.log),
                    # Keyed batches each aborted process had drawn on its shard before the abort.
                    "draws_before_abort": [int(m.group(1)) for l in keeper.log
                                           for m in [re.search(r"keyed batch (\d+) of this", l)] if m]})
    if args.transport == "tcp":
        out["relay"] = args.relay
        if relay:
            out["rsyslog_messages"] = [l for l in relay.lines if "omfwd" in l or "error" in l][:10]
        out.update({k: report.get(k) for k in ("tcp_reconnects", "tcp_broken", "tcp_resent_lines",
                                                 "tcp_unacked_lines_at_break")})
        out["missing_runs"] = [[a, b, b - a + 1] for a, b in gaps_seq][:20]
        # Per SIGKILL with --freeze-at-kill (see snapshot): lines pixeld had read but not made
        # durable (its start offset + lines taken in, read just before the freeze, − the next
        # process's recovered log end; what it read between that read and the freeze shows up
        # as the rest of the missing run), and the bytes pixeld's kernel held unread and the
        # relay's kernel held unacknowledged, as lines at the log's average line length.
        out["at_kill"] = [{
            "read_not_durable_lines": k["taken"] + sum(k["start"].values()) - sum(k.get("end", {}).values()),
            "pixeld_unread_lines": round(k["rx"] / avg), "relay_unacked_lines": round(k["tx"] / avg),
            "pixeld_unread_bytes": k["rx"], "relay_unacked_bytes": k["tx"],
            } for k in kills]
        out["avg_line_bytes"] = round(avg, 1)
        out["stop_lines"] = [l for l in keeper.log if " stopped: " in l]
    out["blast"] = {k: report.get(k) for k in ("seconds", "events_per_second", "max_lag_seconds")}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--rcvbuf", type=int, default=32 << 20)
    ap.add_argument("--modes", nargs="+", default=["term", "kill9"])
    ap.add_argument("--transport", choices=["udp", "http", "tcp"], default="udp",
                    help="udp: datagrams; http: POST /v1/events batches with Idempotency-Keys; "
                         "tcp: a relay's connection")
    ap.add_argument("--batch", type=int, default=100, help="events per HTTP batch or TCP write")
    ap.add_argument("--batches", type=int, default=0,
                    help="send exactly this many batches (instead of --duration)")
    ap.add_argument("--connections", type=int, default=1, help="HTTP, TCP: parallel clients")
    ap.add_argument("--faults", default="",
                    help="PIXELD_TEST_HTTP_FAULTS for pixeld (a fault-injection build)")
    ap.add_argument("--relay", choices=["blast", "rsyslog"], default="blast",
                    help="tcp: blast writes to pixeld itself, or to an rsyslogd (imtcp → omfwd) that relays")
    ap.add_argument("--freeze-at-kill", action="store_true",
                    help="tcp, kill9: freeze pixeld and the relay at each kill to account for every lost line")
    ap.add_argument("--binary", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release/pixeld"))
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
