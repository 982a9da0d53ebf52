#!/usr/bin/env python3
"""Checkpoint cost while ingesting: what `agg.checkpoint_interval` costs a shard.

Build first, then run (Python 3.11 standard library only):

    cargo build --release && python3 benches/checkpoint_cost.py

Runs, interleaved and repeated (--rounds), one `pixeld serve` (1 shard, pinned to CPU 0) per
setting of `agg.checkpoint_interval` (default: 10s, and 24h which writes none during the run),
each on a fresh data dir, and sends it `pixeld blast --transport udp --rate R --duration D`
from CPU 1 (realistic generated hits: 6 sites, 5000 urls each, 200 000 visitors) while a
client asks `/v1/top?dim=url&from=-1h&to=now&limit=10` every 20 ms. Reports per run:
- the receiver's CPU-seconds per million events (from /proc), and their difference between
  the settings: the checkpoints' share;
- checkpoints written, bytes per checkpoint, time in checkpoints per checkpoint (encode +
  durable write, `pixeld_agg_checkpoint_seconds_total`), and the longest encode — the longest
  the shard's executor is held by a checkpoint (`pixeld_agg_checkpoint_encode_max_seconds`);
- the queries' p50, p99 and max latency (client side) over the whole run.

Every process it starts is stopped by its PID; traffic goes only to 127.0.0.1.
"""
import argparse, http.client, json, os, shutil, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from e2e import Pixeld, cpu_seconds, log, pct, stop  # noqa: E402


class Querier:
    def __init__(self, port):
        self.port, self.lat, self.done = port, [], False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self.done:
            t = time.perf_counter()
            c.request("GET", "/v1/top?dim=url&from=-1h&to=now&limit=10")
            c.getresponse().read()
            self.lat.append(time.perf_counter() - t)
            time.sleep(0.02)

    def finish(self):
        self.done = True
        self.t.join()
        return self.lat


def one(a, interval):
    data = tempfile.mkdtemp(prefix="ckpt-", dir=a.work)
    conf = os.path.join(data, "pixeld.toml")
    with open(conf, "w") as f:
        f.write('[agg]\ncheckpoint_interval = "%s"\n' % interval)
    s = Pixeld(a, os.path.join(data, "d"), ["--config", conf])
    q = Querier(s.http)
    cpu0 = cpu_seconds(s.p.pid)
    out = subprocess.run(["taskset", "-c", "1", a.bin, "blast", "--json", "--transport", "udp",
                          "--target", "127.0.0.1:%d" % s.udp, "--http", "127.0.0.1:%d" % s.http,
                          "--rate", str(a.rate), "--duration", a.duration, "--seed", "42"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if out.returncode not in (0, 2):
        raise SystemExit("pixeld blast failed: %s" % out.stderr.strip())
    r = json.loads(out.stdout)
    cpu = cpu_seconds(s.p.pid) - cpu0
    lat = q.finish()
    m = s.metrics()
    stop(s.p)
    shutil.rmtree(data, ignore_errors=True)
    g = lambda k: sum(v for kk, v in m.items() if kk == k or kk.startswith(k + "{"))
    n = g("pixeld_agg_checkpoints_total")
    res = {"interval": interval, "sent": r["sent"], "appended": r["pixeld"]["appended"],
           "cpu_s_per_million": cpu / max(r["sent"], 1) * 1e6,
           "checkpoints": int(n),
           "bytes_per_checkpoint": g("pixeld_agg_checkpoint_bytes_total") / max(n, 1),
           "seconds_per_checkpoint": g("pixeld_agg_checkpoint_seconds_total") / max(n, 1),
           "encode_max_ms": g("pixeld_agg_checkpoint_encode_max_seconds") * 1e3,
           "agg_memory_mib": g("pixeld_agg_memory_bytes") / 2**20,
           "queries": len(lat), "query_p50_ms": pct(lat, 50) * 1e3, "query_p99_ms": pct(lat, 99) * 1e3,
           "query_max_ms": max(lat, default=0) * 1e3}
    log("%-4s %s" % (interval, json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()})))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/pixeld"))
    ap.add_argument("--rate", type=int, default=100_000)
    ap.add_argument("--duration", default="60s")
    ap.add_argument("--intervals", nargs="+", default=["10s", "24h"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default=None, help="scratch directory (default: under target/)")
    a = ap.parse_args()
    a.work = a.work or tempfile.mkdtemp(prefix="ckpt-", dir=os.path.join(ROOT, "target"))
    rows = []
    try:
        for _ in range(a.rounds):
            for iv in a.intervals:
                rows.append(one(a, iv))
    finally:
        if a.work.startswith(os.path.join(ROOT, "target")):
            shutil.rmtree(a.work, ignore_errors=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
