#!/usr/bin/env python3
"""Interim end-to-end ingest measurement (until `pixeld blast`, issue 5, replaces it).

Starts a release `pixeld serve` with one shard pinned to CPU 0 on free loopback ports, sends
N realistic nginx JSON lines from this process pinned to CPU 1 over TCP (large writes, line
framing) and then over UDP (one datagram per line, as nginx sends), and reports for each:
events/s appended, pixeld CPU-seconds per million events, and every drop pixeld counted.

    cargo build --release && python3 benches/ingest_load.py [--tcp 2000000] [--udp 300000]
"""
import argparse, json, os, random, socket, subprocess, sys, tempfile, time, urllib.request

def free_port(kind):
    s = socket.socket(socket.AF_INET, kind); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def lines(n, seed=42):
    rnd = random.Random(seed)
    sites = ["www.example.com", "news.example.org", "m.sportsline.example", "shop.example.net"]
    ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
    msec = 1795311543462
    out = []
    for i in range(n):
        msec += rnd.randrange(3)
        out.append(('<190>Nov 22 01:39:03 pixel: {"msec":%d.%03d,"url":"https%%3A%%2F%%2F%s%%2Farticles%%2F%d","urlref":"https%%3A%%2F%%2Fwww.google.com%%2F","vid":"%016x","ua":"%s","ip":"203.0.113.%d","action":"pageview"}'
                    % (msec // 1000, msec % 1000, sites[i % 4], rnd.randrange(5000), rnd.randrange(200000), ua, i % 250)).encode())
    return out

def metrics(port):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
    m = {}
    for l in text.splitlines():
        if l and not l.startswith("#"):
            k, v = l.rsplit(" ", 1); m[k] = float(v)
    return m

def cpu_seconds(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def wait_appended(port, target, timeout=120):
    t = time.time()
    while time.time() - t < timeout:
        m = metrics(port)
        if m.get("pixeld_appended_events_total", 0) + sum(v for k, v in m.items() if k.startswith("pixeld_dropped_events_total")) >= target:
            return m
        time.sleep(0.02)
    return metrics(port)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tcp", type=int, default=2_000_000)
    ap.add_argument("--udp", type=int, default=300_000)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "pixeld"))
    a = ap.parse_args()
    os.sched_setaffinity(0, {1})
    tmp = tempfile.mkdtemp(dir=os.path.join(os.path.dirname(__file__), "..", "target"))
    udp, tcp, http = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    p = subprocess.Popen(["taskset", "-c", "0", a.bin, "serve", "--data-dir", tmp + "/data", "--shards", "1",
                          "--udp", "127.0.0.1:%d" % udp, "--tcp", "127.0.0.1:%d" % tcp, "--http", "127.0.0.1:%d" % http],
                         stderr=subprocess.PIPE, text=True)
    for l in p.stderr:
        if "ready" in l: break
    results = []
    try:
        data = lines(min(a.tcp, 200_000))
        if a.tcp:
            blob = b"\n".join(data) + b"\n"
            reps, rest = divmod(a.tcp, len(data))
            before, cpu0, t0 = metrics(http), cpu_seconds(p.pid), time.time()
            s = socket.create_connection(("127.0.0.1", tcp))
            for _ in range(reps): s.sendall(blob)
            s.sendall(b"\n".join(data[:rest]) + (b"\n" if rest else b"")); s.close()
            m = wait_appended(http, a.tcp)
            dt, cpu = time.time() - t0, cpu_seconds(p.pid) - cpu0
            results.append(("tcp", a.tcp, dt, cpu, m))
        if a.udp:
            base = metrics(http)
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            cpu0, t0 = cpu_seconds(p.pid), time.time()
            addr = ("127.0.0.1", udp)
            for i in range(a.udp): u.sendto(data[i % len(data)], addr)
            m = wait_appended(http, a.tcp + a.udp, timeout=30)
            dt, cpu = time.time() - t0, cpu_seconds(p.pid) - cpu0
            results.append(("udp", a.udp, dt, cpu, m))
    finally:
        p.terminate(); p.wait()
    for kind, n, dt, cpu, m in results:
        drops = {k: v for k, v in m.items() if k.startswith("pixeld_dropped_events_total") and v}
        print(json.dumps({"transport": kind, "events": n, "seconds": round(dt, 3), "events_per_s": round(n / dt),
                          "pixeld_cpu_s_per_million": round(cpu / n * 1e6, 3),
                          "appended_total": m.get("pixeld_appended_events_total"),
                          "kernel_udp_drops": m.get("pixeld_udp_kernel_drops_total"), "drops": drops}))

if __name__ == "__main__":
    sys.exit(main())
