#!/usr/bin/env python3
"""Kafka export throughput: records/s per shard into a local tansu broker, and the CPU the
export costs pixeld per million records.

    cargo build --release && python3 benches/export.py [--records 1000000] [--shards 1]

1. Starts tansu 0.6.0 (memory storage; ~/.cache/pixeld/tansu-0.6.0, installed by
   scripts/test, or PIXELD_TANSU) on a free loopback port and creates the topic.
2. Fills a fresh data dir with --records generated hits over TCP (`pixeld blast`), export off.
3. Restarts pixeld with [export.kafka] (start = earliest): the export catches up on the whole
   log while nothing else happens, timed from its start line until pixeld_export_sent_total
   reaches the record count, with pixeld's and tansu's CPU time read from /proc.
Prints one JSON line. Everything runs on loopback and ends by PID.
"""
import argparse, json, os, signal, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import cpu_seconds as cpu_s, free_port  # noqa: E402  (the end-to-end bench's helpers)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIXELD = os.path.join(ROOT, "target", "release", "pixeld")
TANSU = os.environ.get("PIXELD_TANSU", os.path.expanduser("~/.cache/pixeld/tansu-0.6.0/bin/tansu"))


def metrics(port):
    out = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
    return out


def serve(cfg, log):
    p = subprocess.Popen([PIXELD, "serve", "--config", cfg], stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    return p


def wait_line(log, text, proc, limit=60):
    end = time.time() + limit
    while time.time() < end:
        if text in open(log).read():
            return
        if proc.poll() is not None:
            sys.exit(f"pixeld exited: {open(log).read()}")
        time.sleep(0.02)
    sys.exit(f"timed out waiting for {text!r}: {open(log).read()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--key", default="url", help="export.kafka.key")
    ap.add_argument("--property", action="append", default=[], metavar="K=V",
                    help="a librdkafka property for [export.kafka.properties] (repeatable)")
    a = ap.parse_args()
    if not os.path.exists(TANSU):
        sys.exit(f"tansu not found at {TANSU}: run ./scripts/test first (it installs it) or set PIXELD_TANSU")
    work = tempfile.mkdtemp(prefix="pixeld-export-bench-")
    kport = free_port()
    url = f"tcp://127.0.0.1:{kport}"
    tansu = subprocess.Popen([TANSU, "broker", "--listener-url", url, "--advertised-listener-url", url,
                              "--storage-engine", "memory://tansu/", "--silent"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        subprocess.run([TANSU, "topic", "create", "--broker", url, "--partitions", "3", "hits"],
                       check=True, stdout=subprocess.DEVNULL)
        udp, tcp, http = free_port(), free_port(), free_port()
        base = (f'data_dir = "{work}/data"\nshards = {a.shards}\n[listen]\nudp = "127.0.0.1:{udp}"\n'
                f'tcp = "127.0.0.1:{tcp}"\nhttp = "127.0.0.1:{http}"\n')
        plain = os.path.join(work, "plain.toml")
        open(plain, "w").write(base)
        exp = os.path.join(work, "export.toml")
        props = "".join(f'"{kv.split("=", 1)[0]}" = "{kv.split("=", 1)[1]}"\n' for kv in a.property)
        open(exp, "w").write(base + f'[export.kafka]\nbrokers = "127.0.0.1:{kport}"\ntopic = "hits"\nkey = "{a.key}"\n'
                             f'[export.kafka.properties]\n{props}')
        log = os.path.join(work, "fill.log")
        p = serve(plain, log)
        wait_line(log, "pixeld: ready", p)
        subprocess.run([PIXELD, "blast", "--config", plain, "--transport", "tcp", "--count", str(a.records),
                        "--connections", str(a.shards)], check=True, stdout=subprocess.DEVNULL)
        p.send_signal(signal.SIGTERM)
        p.wait()
        log = os.path.join(work, "export.log")
        p = serve(exp, log)
        wait_line(log, "pixeld: export: to Kafka topic", p)
        c0, k0, t0 = cpu_s(p.pid), cpu_s(tansu.pid), time.time()
        while True:
            m = metrics(http)
            if m.get("pixeld_export_sent_total", 0) >= a.records:
                break
            if time.time() - t0 > 600:
                sys.exit(f"export did not finish: {m}")
            time.sleep(0.05)
        t1, c1, k1 = time.time(), cpu_s(p.pid), cpu_s(tansu.pid)
        p.send_signal(signal.SIGTERM)
        p.wait()
        secs = t1 - t0
        print(json.dumps({
            "records": a.records, "shards": a.shards, "seconds": round(secs, 3),
            "records_per_s_per_shard": round(a.records / secs / a.shards),
            "pixeld_cpu_s_per_million": round((c1 - c0) / a.records * 1e6, 2),
            "tansu_cpu_s_per_million": round((k1 - k0) / a.records * 1e6, 2),
            "errors": {k: v for k, v in m.items() if k.startswith("pixeld_export_errors_total") and v > 0},
        }))
    finally:
        tansu.kill()
        tansu.wait()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
