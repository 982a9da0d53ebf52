#!/usr/bin/env python3
"""Restart benchmark: how long a `pixeld serve` with a large log takes, after a clean stop or a
kill -9, until it takes hits again and until its aggregates are complete.

Build first, then run (Python 3.11 standard library only):

    cargo build --release && python3 benches/restart.py --records 5000000 --shards 1 2

With --reshard N, each data dir is started once more with N shards after the runs above: the
store is re-partitioned (a changed shard count) and the 30-day answers are compared.

For each record count and shard count it:
1. writes that many realistic nginx lines with `pixeld blast --out` (fixed seed), their event
   times spread evenly over --days days ending now;
2. appends them to the shards' logs with `pixeld import` (an equal share per shard, the
   receive time of each record being the import's);
3. measures the first start (no aggregate store yet: the whole log is replayed, beside live
   ingest) and stops it cleanly (it writes a checkpoint); measures a start after the clean
   stop; kills that one with SIGKILL once complete, and measures the start after the kill.

What is measured from the moment `serve` is started (wall clock, loopback only):
- `http_s`, `tcp_s`: the HTTP port answers `/healthz`; a TCP connection to the TCP port is
  accepted;
- `udp_s`: a probe datagram sent every 10 ms shows up in
  `pixeld_received_events_total{transport="udp"}` (the UDP socket is bound and read);
- `ready_s`: pixeld reports ready (stderr `pixeld: ready`): logs recovered, sockets bound;
- `complete_s`: pixeld reports `pixeld: aggregates complete`: the aggregates loaded from the
  store (`<data_dir>/agg`) and the log replayed after it (all of it when there is no store);
- `cpu_s`: the receiver's CPU-seconds until then, and the rebuild's own figure
  (`pixeld_agg_rebuild_seconds`, the slowest shard);
- `first_checkpoint_s`: from `complete` until the first checkpoint is written (the one that
  seals the closed hours and days), and `checkpoint_hold_ms`, the longest the executor was held
  for a checkpoint (`pixeld_agg_checkpoint_encode_max_seconds`);
- once that checkpoint is written:
  `rss_mb` (VmRSS), `agg_mb` (`pixeld_agg_memory_bytes`, heap), `sealed_mb` / `sealed_files`
  (`pixeld_agg_sealed_bytes` / `_files`, mapped files; 0 for a build without them) and
  `store_mb` (bytes under `<data_dir>/agg`);
- then the median time of a few queries over 24 h, 7 and 30 days (`q_*_ms`, 7 runs each).

Prints one line per run and a JSON array of every figure at the end. Every process it starts
is stopped by its PID; traffic goes only to 127.0.0.1. The machine is shared: repeat a run
and quote the range.
"""
import argparse, http.client, json, os, shutil, signal, socket, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from e2e import cpu_seconds, free_port, log, stop  # noqa: E402


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    c.request("GET", "/metrics")
    out = {}
    for line in c.getresponse().read().decode().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def healthy(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=0.2)
        c.request("GET", "/healthz")
        return c.getresponse().status == 200
    except OSError:
        return False


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def start(a, data, shards):
    ports = {"udp": free_port(socket.SOCK_DGRAM), "tcp": free_port(), "http": free_port()}
    p = subprocess.Popen(
        ["taskset", "-c", a.cpus, a.bin, "serve", "--data-dir", data, "--shards", str(shards),
         "--udp", "127.0.0.1:%d" % ports["udp"], "--tcp", "127.0.0.1:%d" % ports["tcp"],
         "--http", "127.0.0.1:%d" % ports["http"]],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.set_blocking(p.stderr.fileno(), False)
    return p, ports


def measure(a, data, shards):
    """One start: seconds from spawn until each port takes hits and until ready."""
    t0 = time.perf_counter()
    p, ports = start(a, data, shards)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seen = {}
    stderr = ""
    deadline = t0 + a.timeout
    while time.perf_counter() < deadline and len(seen) < 5:
        now = time.perf_counter() - t0
        try:
            stderr += os.read(p.stderr.fileno(), 1 << 16).decode(errors="replace")
        except BlockingIOError:
            pass
        if "ready" not in seen and "pixeld: ready" in stderr:
            seen["ready"] = now
        if "complete" not in seen and "pixeld: aggregates complete" in stderr:
            seen["complete"] = now
        if "http" not in seen and healthy(ports["http"]):
            seen["http"] = now
        if "tcp" not in seen and accepts(ports["tcp"]):
            seen["tcp"] = now
        if "udp" not in seen:
            udp.sendto(b"restart-probe", ("127.0.0.1", ports["udp"]))
            if "http" in seen and metrics(ports["http"]).get('pixeld_received_events_total{transport="udp"}', 0) > 0:
                seen["udp"] = now
        if p.poll() is not None:
            raise SystemExit("pixeld serve exited: %s" % stderr[-2000:])
        time.sleep(0.01)
    if len(seen) < 5:
        stop(p)
        raise SystemExit("not ready within --timeout %ss: %s" % (a.timeout, stderr[-2000:]))
    m = metrics(ports["http"])
    rebuild = max((v for k, v in m.items() if k.startswith("pixeld_agg_rebuild_seconds")), default=0)
    r = {"http_s": seen["http"], "tcp_s": seen["tcp"], "udp_s": seen["udp"], "ready_s": seen["ready"], "complete_s": seen["complete"],
         "cpu_s": cpu_seconds(p.pid), "rebuild_s": rebuild,
         "repartitioned": "re-partitioned from" in stderr, "rebuilt_store": "written by a run with" in stderr}
    c = http.client.HTTPConnection("127.0.0.1", ports["http"], timeout=30)
    c.request("GET", "/v1/summary?from=-30d")
    summary = json.loads(c.getresponse().read())
    r["views_30d"], r["uniques_30d"] = summary.get("views"), summary.get("uniques")
    r.update(memory_after_checkpoint(a, p, ports, data))
    r.update(query_times(ports))
    return p, r


QUERIES = {
    "q_summary_30d_ms": "/v1/summary?from=-30d",
    "q_daily_30d_ms": "/v1/timeseries?from=-30d&step=1d",
    "q_hourly_7d_ms": "/v1/timeseries?from=-7d&step=1h",
    "q_top_urls_30d_ms": "/v1/top?dim=url&from=-30d&limit=100",
    "q_summary_24h_ms": "/v1/summary?from=-24h",
}


def query_times(ports):
    """Median of 7 timings of each query (after one warm-up), in ms."""
    out = {}
    for name, q in QUERIES.items():
        times = []
        for i in range(8):
            c = http.client.HTTPConnection("127.0.0.1", ports["http"], timeout=30)
            t = time.perf_counter()
            c.request("GET", q)
            resp = c.getresponse()
            resp.read()
            if resp.status != 200:
                raise SystemExit("%s answered %d" % (q, resp.status))
            if i:
                times.append((time.perf_counter() - t) * 1000)
        times.sort()
        out[name] = times[len(times) // 2]
    return out


def msum(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def memory_after_checkpoint(a, p, ports, data):
    """Waits for the first checkpoint after `complete` (it seals what closed), then reads memory."""
    t = time.perf_counter()
    deadline = t + a.timeout
    while msum(metrics(ports["http"]), "pixeld_agg_checkpoints_total") < 1 and time.perf_counter() < deadline:
        time.sleep(0.05)
    first_checkpoint = time.perf_counter() - t
    time.sleep(2.5)  # the memory gauges are published every 2 s
    m = metrics(ports["http"])
    rss = 0
    with open("/proc/%d/status" % p.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    store = 0
    for root, _, files in os.walk(os.path.join(data, "agg")):
        for name in files:
            try:
                store += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    mb = 1 << 20
    return {"first_checkpoint_s": first_checkpoint,
            "checkpoint_hold_ms": msum(m, "pixeld_agg_checkpoint_encode_max_seconds") * 1000,
            "rss_mb": rss / mb, "agg_mb": msum(m, "pixeld_agg_memory_bytes") / mb,
            "sealed_mb": msum(m, "pixeld_agg_sealed_bytes") / mb,
            "sealed_files": msum(m, "pixeld_agg_sealed_files"), "store_mb": store / mb}


def fill(a, data, n, shards):
    """n generated lines over --days days ending now, split evenly over the shards' logs."""
    now_ms = int(time.time() * 1000)
    span_ms = a.days * 86400 * 1000
    lines = os.path.join(a.work, "lines-%d.ndjson" % n)
    if not os.path.exists(lines):
        subprocess.run([a.bin, "blast", "--out", lines, "--count", str(n), "--seed", "42",
                        "--start", str(now_ms - span_ms), "--event-rate", str(n / (span_ms / 1000))],
                       check=True, stderr=subprocess.DEVNULL)
    per = -(-n // shards)
    with open(lines, "rb") as f:
        for s in range(shards):
            imp = subprocess.Popen([a.bin, "import", "--data-dir", data, "--shard", str(s), "--fsync", "never"],
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _, line in zip(range(per), f):
                imp.stdin.write(line)
            imp.stdin.close()
            if imp.wait() != 0:
                raise SystemExit("pixeld import failed")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/pixeld"))
    ap.add_argument("--records", type=int, nargs="+", default=[5_000_000])
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--cpus", default="0,1", help="CPUs pixeld serve may run on (taskset)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--work", default=None, help="scratch directory (default: under target/)")
    ap.add_argument("--reshard", type=int, default=None,
                    help="then start once more with this many shards (the store is re-partitioned) and compare")
    a = ap.parse_args()
    a.work = a.work or tempfile.mkdtemp(prefix="restart-", dir=os.path.join(ROOT, "target"))
    results = []
    try:
        for n in a.records:
            for shards in a.shards:
                data = tempfile.mkdtemp(prefix="data-", dir=a.work)
                t = time.perf_counter()
                fill(a, data, n, shards)
                log("%d records into %d shard(s) in %.1f s" % (n, shards, time.perf_counter() - t))
                p, first = measure(a, data, shards)  # the first start after import: no store
                stop(p, timeout=a.timeout)
                p, clean = measure(a, data, shards)
                p.send_signal(signal.SIGKILL); p.wait()
                p, killed = measure(a, data, shards)
                stop(p, timeout=a.timeout)
                runs = [("no store", first), ("clean stop", clean), ("kill -9", killed)]
                if a.reshard:
                    p, resharded = measure(a, data, a.reshard)
                    stop(p, timeout=a.timeout)
                    runs.append(("%d → %d shards" % (shards, a.reshard), resharded))
                    log("re-partitioned: %s (store rebuilt instead: %s); 30-day views %s → %s, uniques %s → %s"
                        % (resharded["repartitioned"], resharded["rebuilt_store"], killed["views_30d"],
                           resharded["views_30d"], killed["uniques_30d"], resharded["uniques_30d"]))
                for kind, r in runs:
                    r.update({"records": n, "shards": shards, "after": kind})
                    log("%9d records, %d shard(s), after %-10s ports: http %.2f s, tcp %.2f s, udp %.2f s; "
                        "ready %.2f s; complete %.2f s (catch-up %.2f s); cpu %.2f s; rss %.0f MB, agg heap %.0f MB, "
                        "sealed %.0f MB in %d files, store %.0f MB"
                        % (n, shards, kind, r["http_s"], r["tcp_s"], r["udp_s"], r["ready_s"], r["complete_s"],
                           r["rebuild_s"], r["cpu_s"], r["rss_mb"], r["agg_mb"], r["sealed_mb"], r["sealed_files"],
                           r["store_mb"]))
                    log("    first checkpoint after complete: written after %.2f s, executor held at most %.1f ms"
                        % (r["first_checkpoint_s"], r["checkpoint_hold_ms"]))
                    log("    queries (median of 7, ms): " + ", ".join("%s %.1f" % (k[2:-3], r[k]) for k in QUERIES))
                    results.append(r)
                shutil.rmtree(data, ignore_errors=True)
    finally:
        print(json.dumps(results, indent=1))
        if not a.work.startswith(os.path.join(ROOT, "target")):
            return
        shutil.rmtree(a.work, ignore_errors=True)


if __name__ == "__main__":
    main()
