#!/usr/bin/env python3
"""Aggregate memory side by side: two pixeld binaries, the same lines, interleaved rounds.

    python3 benches/agg_memory.py --bin target/release/pixeld --compare /tmp/pixeld-before \
        --events 2000000 --repeat 3

Each round starts `serve --shards 1` (pinned to CPU 0) of each binary in turn on a fresh data
directory, sends it the same `pixeld blast --transport tcp` lines (pinned to CPU 1, fixed seed
and start time), reads `/metrics` a second later and stops it by its PID. Per binary: the
median and range of the aggregates' heap (`pixeld_agg_memory_bytes`), the visit table's bytes
and visitors (`pixeld_agg_visitor_bytes`, `pixeld_agg_visitors`), bytes per visitor held, and
CPU-seconds per million events. Uses `benches/e2e.py`'s helpers (standard library only).
"""
import argparse, importlib.util, json, os, shutil, statistics, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("e2e", os.path.join(HERE, "e2e.py"))
e2e = importlib.util.module_from_spec(spec)
spec.loader.exec_module(e2e)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.path.join(os.path.dirname(HERE), "target/release/pixeld"))
    p.add_argument("--compare", help="a second pixeld binary (the build before a change)")
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    a.start = int(time.time() * 1000) - a.events // 100
    a.work = tempfile.mkdtemp(prefix="pixeld-aggmem-")
    bins = {"bin": a.bin}
    if a.compare:
        bins["compare"] = a.compare
    rows = {k: [] for k in bins}
    try:
        for r in range(a.repeat):
            for name, binary in bins.items():
                data = tempfile.mkdtemp(dir=a.work)
                s = e2e.Pixeld(a, data, binary=binary)
                try:
                    c0 = e2e.cpu_seconds(s.p.pid)
                    out = e2e.blast(a, ["--count", str(a.events), "--http", "127.0.0.1:%d" % s.http,
                                        "--transport", "tcp", "--target", "127.0.0.1:%d" % s.tcp])
                    cpu = e2e.cpu_seconds(s.p.pid) - c0
                    time.sleep(1)
                    m = s.metrics()
                finally:
                    e2e.stop(s.p)
                    shutil.rmtree(data, ignore_errors=True)
                visitors = m.get("pixeld_agg_visitors", 0)
                row = {"cpu_s_per_million": cpu / a.events * 1e6,
                       "agg_memory_bytes": m.get("pixeld_agg_memory_bytes", 0),
                       "visitor_bytes": m.get("pixeld_agg_visitor_bytes", 0), "visitors": visitors,
                       "bytes_per_visitor": m.get("pixeld_agg_visitor_bytes", 0) / max(visitors, 1),
                       "appended": out["pixeld"]["appended"]}
                rows[name].append(row)
                e2e.log("round %d %-8s %s" % (r + 1, name, json.dumps({k: round(v, 3) for k, v in row.items()})))
    finally:
        shutil.rmtree(a.work, ignore_errors=True)
    summary = {}
    for name, rs in rows.items():
        summary[name] = {k: {"median": statistics.median(x[k] for x in rs), "min": min(x[k] for x in rs),
                             "max": max(x[k] for x in rs)} for k in rs[0]}
        print("%s (%s):" % (name, bins[name]))
        for k, v in summary[name].items():
            print("  %-20s %14.3f [%.3f – %.3f]" % (k, v["median"], v["min"], v["max"]))
    if a.compare:
        for k in ("agg_memory_bytes", "visitor_bytes", "cpu_s_per_million"):
            print("ratio bin/compare %-20s %.3f" % (k, summary["bin"][k]["median"] / max(summary["compare"][k]["median"], 1e-9)))
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
