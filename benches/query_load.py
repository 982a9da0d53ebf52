#!/usr/bin/env python3
"""Aggregate rebuild speed, memory, and query latency while ingesting (issue 4's benchmark).

1. Writes N realistic nginx JSON lines (default 3 M) with event times spread over the last
   24 h, urls Zipf-distributed over 100 000 distinct urls on 8 sites, visitors over 1 M ids,
   25 % heartbeats, and imports them into shard 0 of a fresh data dir (`pixeld import`).
2. Starts a release `pixeld serve` (one shard pinned to CPU 0 unless --shards) and reads how
   fast it rebuilt the aggregates from that log (records/s, from its own report).
3. While a sender process pinned to CPU 1 streams fresh hits over TCP at --rate events/s, runs
   --queries of each reference query and reports p50/p99: top-10 urls of the last hour, and a
   24 h minute series of one (popular) url. Latency is measured by the client (it includes
   Python's HTTP overhead, ~0.2 ms) and by pixeld (`pixeld_query_duration_seconds`).
4. Reports RSS, aggregate memory and live cells from /metrics.

    cargo build --release && python3 benches/query_load.py [--lines 3000000] [--rate 50000]
"""
import argparse, os, random, re, socket, subprocess, sys, tempfile, threading, time, urllib.request

SITES = ["www.example.com", "news.example.org", "m.sportsline.example", "shop.example.net",
         "blog.example.io", "docs.example.dev", "video.example.tv", "forum.example.net"]
REFS = ["", "https%3A%2F%2Fwww.google.com%2F", "https%3A%2F%2Ft.co%2Fabc", "https%3A%2F%2Fwww.facebook.com%2F",
        "https%3A%2F%2Fnews.ycombinator.com%2F", ""]
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"

def zipf(rnd, n):
    return min(n, max(1, int(n ** rnd.random())))

def line(rnd, msec):
    u = zipf(rnd, 100_000) - 1
    site = SITES[u % 8]
    act = "heartbeat" if rnd.random() < 0.25 else "pageview"
    return ('<190>Nov 22 01:39:03 pixel: {"msec":%d.%03d,"url":"https%%3A%%2F%%2F%s%%2Fa%%2F%d","urlref":"%s","vid":"%x","ua":"%s","ip":"203.0.113.%d","action":"%s"}\n'
            % (msec // 1000, msec % 1000, site, u, REFS[rnd.randrange(6)], zipf(rnd, 1_000_000), UA, u % 250, act))

def free_port(kind):
    s = socket.socket(socket.AF_INET, kind); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def get(port, path):
    t = time.perf_counter()
    body = urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=30).read()
    return time.perf_counter() - t, body

def metrics(port):
    m = {}
    for l in get(port, "/metrics")[1].decode().splitlines():
        if l and not l.startswith("#"):
            k, v = l.rsplit(" ", 1); m[k] = float(v)
    return m

def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]

SENDER = r'''
import socket, sys, time, random
port, rate, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, sys.argv[4]); import query_load as q
rnd = random.Random(seed); s = socket.create_connection(("127.0.0.1", port))
t0 = time.time(); sent = 0
while True:
    now = int(time.time() * 1000)
    buf = "".join(q.line(rnd, now - rnd.randrange(60_000)) for _ in range(1000)).encode()
    s.sendall(buf); sent += 1000
    ahead = sent / rate - (time.time() - t0)
    if ahead > 0: time.sleep(ahead)
'''

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=3_000_000)
    ap.add_argument("--rate", type=int, default=50_000, help="events/s streamed while querying")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "pixeld"))
    a = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    tmp = tempfile.mkdtemp(prefix="pixeld-query-", dir=os.path.join(here, "..", "target"))
    data, src = os.path.join(tmp, "data"), os.path.join(tmp, "hits.ndjson")
    rnd = random.Random(1)
    now = int(time.time() * 1000)
    print("writing %d lines over the last 24 h ..." % a.lines, file=sys.stderr)
    with open(src, "w") as f:
        for i in range(a.lines):
            f.write(line(rnd, now - 86_400_000 + int(i * 86_400_000 / a.lines)))
    subprocess.run([a.bin, "import", "--data-dir", data, "--shard", "0", src], check=True, stdout=subprocess.DEVNULL)
    os.unlink(src)
    http, tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    cpus = "0" if a.shards == 1 else "0-%d" % (a.shards - 1)
    t = time.time()
    p = subprocess.Popen(["taskset", "-c", cpus, a.bin, "serve", "--data-dir", data, "--shards", str(a.shards),
                          "--http", "127.0.0.1:%d" % http, "--tcp", "127.0.0.1:%d" % tcp, "--udp", "127.0.0.1:%d" % udp],
                         stderr=subprocess.PIPE, text=True)
    # pixeld is ready (ingesting) at once and reports when its aggregates have caught up
    # with the log: "aggregates complete: N shards; R log records replayed ... in S s".
    ready, recs, secs = None, 0, 0.0
    for l in p.stderr:
        if "ready:" in l and ready is None: ready = time.time() - t
        m = re.search(r"aggregates complete: \d+ shards?; (\d+) log records replayed .* in ([\d.]+) s", l)
        if m:
            recs, secs = int(m.group(1)), float(m.group(2))
            break
    if not secs:
        sys.exit("pixeld ended before its aggregates caught up with the log")
    # Keep reading its stderr so that a full pipe never blocks it.
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    print("rebuild: %d records in %.2f s = %.2f M records/s (%d shard(s)); ready after %.2f s" % (recs, secs, recs / secs / 1e6, a.shards, ready or 0.0))
    sender = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", SENDER, str(tcp), str(a.rate), "7", here])
    try:
        measure(a, p, http, sender)
    finally:
        sender.kill(); p.terminate(); p.wait()
        subprocess.run(["rm", "-rf", tmp])

def measure(a, p, http, sender):
    time.sleep(2)
    top, series = [], []
    url = "https://www.example.com/a/0"
    for i in range(a.queries):
        top.append(get(http, "/v1/top?dim=url&from=-1h&limit=10")[0])
        series.append(get(http, "/v1/timeseries?from=-24h&step=1m&url=" + urllib.parse.quote(url, safe=""))[0])
    m = metrics(http)
    rss = int(re.search(r"VmRSS:\s+(\d+)", open("/proc/%d/status" % p.pid).read()).group(1)) * 1024
    buckets = {float(k.split('"')[1]) if "+Inf" not in k else float("inf"): v for k, v in m.items() if k.startswith("pixeld_query_duration_seconds_bucket")}
    print("while streaming %d events/s over TCP (%d appended during the queries):" % (a.rate, m.get("pixeld_appended_events_total", 0)))
    print("  top-10 urls, last hour:      p50 %.2f ms  p99 %.2f ms  (client side)" % (pct(top, 50) * 1e3, pct(top, 99) * 1e3))
    print("  24 h 1m series of one url:   p50 %.2f ms  p99 %.2f ms  (client side)" % (pct(series, 50) * 1e3, pct(series, 99) * 1e3))
    n = m.get("pixeld_query_duration_seconds_count", 0)
    le99 = next((b for b in sorted(buckets) if buckets[b] >= 0.99 * n), None)
    print("  pixeld_query_duration_seconds: %d queries, mean %.2f ms, p99 <= %s s" % (n, m.get("pixeld_query_duration_seconds_sum", 0) / max(n, 1) * 1e3, le99))
    print("memory: RSS %.0f MiB; aggregates %.0f MiB in %d live cells" % (rss / 2**20, m.get("pixeld_agg_memory_bytes", 0) / 2**20, m.get("pixeld_agg_cells", 0)))

if __name__ == "__main__":
    import urllib.parse
    main()
