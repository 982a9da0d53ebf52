#!/usr/bin/env python3
"""Same input, same answers: two pixeld binaries (before and after a change to the hot path) fed
the same lines must answer every query with the same bytes.

    cargo build --release && python3 benches/same_answers.py --a OLD_BINARY --b target/release/pixeld

Issue 19 asks that answers stay byte-identical across the redesign. This script writes one
input — `pixeld blast --out` lines (seed fixed, event times in the last hour) plus lines that
exercise url and referrer normalisation (mixed-case hosts, ports, userinfo, fragments, query
strings with and without kept parameters, percent-encoded and raw urls, invalid UTF-8 after
decoding, `-` and empty referrers, IPv6 hosts, relative urls that are refused), repeated in a
shuffled order so that caches see both hits and misses — imports it into one data dir per
binary, starts each with the same config (`visit_late_allowance = "7d"`, so that which lines count
for visits does not depend on when each import ran) and shard count on free loopback ports, waits until
the aggregates are complete, asks both the same list of queries with absolute times, and
compares the answers byte for byte. It prints the number of queries, of identical answers and
the first difference, and exits 1 on any difference. It is a check run by hand (and cited in
the README), not a test: it needs two binaries.

Python 3.11 standard library only. Every process it starts is stopped by its PID.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def edge_lines(n, start_ms, seed):
    """Lines whose urls and referrers exercise every branch of normalisation."""
    rnd = random.Random(seed)
    hosts = ["www.example.com", "WWW.Example.COM", "news.example.org:8080", "user:pw@shop.example.net",
             "[::1]:8443", "blog.example.io"]
    paths = ["/", "/a", "/a/b%20c", "/%C3%A9t%C3%A9", "/%FF%FE", "/x%2", "/Case/Path"]
    tails = ["", "#frag", "?id=7", "?utm_source=x&id=8", "?id=9#top", "?a=1&b=2", "?"]
    refs = ["", "-", "%2D", "https://www.Google.com/search?q=x", "https%3A%2F%2Ft.co%2Fabc", "garbage",
            "android-app://com.example", "https://%FF.example/", "http://[2001:db8::1]/p"]
    pool = []
    for _ in range(400):
        url = "https://" + rnd.choice(hosts) + rnd.choice(paths) + rnd.choice(tails)
        if rnd.random() < 0.5:
            url = urllib.parse.quote(url, safe="%")
        if rnd.random() < 0.03:
            url = rnd.choice(["/relative", "mailto:a@b", "https://", ""])
        pool.append((url, rnd.choice(refs)))
    out = []
    for i in range(n):
        url, ref = rnd.choice(pool)
        action = rnd.choice(["pageview", "pageview", "heartbeat", "event"])
        line = {"msec": "%.3f" % ((start_ms + i * 7) / 1000), "url": url, "urlref": ref,
                "vid": "v%04d" % rnd.randrange(3000), "action": action, "inc": rnd.choice([5, 15, 30])}
        out.append(json.dumps(line))
    return out


class Server:
    def __init__(self, binary, data, shards, config):
        self.http = free_port()
        args = [binary, "serve", "--data-dir", data, "--shards", str(shards),
                "--udp", "127.0.0.1:%d" % free_port(socket.SOCK_DGRAM),
                "--tcp", "127.0.0.1:%d" % free_port(), "--http", "127.0.0.1:%d" % self.http]
        if config:
            args += ["--config", config]
        self.log = open(data + ".stderr", "w")
        self.p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log)
        # Ready when its answers are complete (the logs replayed). A large data dir on a slow
        # day takes minutes: wait as long as the replay moves ("catchup_records" falls), and
        # give up only after `stall` seconds without progress.
        stall, left, moved = 120, None, time.time()
        while True:
            if self.p.poll() is not None:
                raise SystemExit("%s exited: see %s.stderr" % (binary, data))
            try:
                answer = json.loads(self.get("/v1/summary?from=-1m&to=now"))
                if answer.get("complete"):
                    break
                now_left = answer.get("catchup_records")
                if now_left is not None and (left is None or now_left < left):
                    left, moved = now_left, time.time()
            except (OSError, ValueError):
                pass
            if time.time() - moved > stall:
                left_text = "unknown" if left is None else str(left)
                raise SystemExit("%s made no progress replaying its logs for %d s (records left: %s): see %s.stderr"
                                 % (binary, stall, left_text, data))
            time.sleep(0.2)

    def get(self, path):
        """The answer's body; an error answer (4xx, 5xx) is an answer too, compared like one."""
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.http, path), timeout=30) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            return b"HTTP %d " % e.code + e.read()

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.log.close()


def queries(first, frm, to):
    """The queries both servers answer: every dimension, the site filter, series of the top urls."""
    span = "from=%s&to=%s" % (frm, to)
    q = ["/v1/summary?" + span]
    for dim in ["url", "ref_domain", "site"]:
        q.append("/v1/top?dim=%s&limit=1000&%s" % (dim, span))
    q.append("/v1/timeseries?step=1m&" + span)
    q.append("/v1/timeseries?step=1h&" + span)
    sites = [i["key"] for i in json.loads(first.get("/v1/top?dim=site&limit=100&" + span))["items"]]
    for site in sites:
        s = urllib.parse.quote(site, safe="")
        q.append("/v1/summary?site=%s&%s" % (s, span))
        q.append("/v1/top?dim=url&limit=100&site=%s&%s" % (s, span))
        q.append("/v1/timeseries?step=1m&site=%s&%s" % (s, span))
    urls = [i["key"] for i in json.loads(first.get("/v1/top?dim=url&limit=20&" + span))["items"]]
    for url in urls:
        q.append("/v1/timeseries?step=1m&url=%s&%s" % (urllib.parse.quote(url, safe=""), span))
    return q


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="the binary before")
    ap.add_argument("--b", default=os.path.join(ROOT, "target", "release", "pixeld"), help="the binary after")
    ap.add_argument("--events", type=int, default=300_000, help="generated lines (plus 20 %% edge lines)")
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--keep-query", default="id", help="url_keep_query of the second config ('' for none)")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="same-answers-", dir=os.path.join(ROOT, "target"))
    try:
        now_ms = int(time.time() * 1000)
        start = now_ms - 3_000_000
        path = os.path.join(work, "hits.ndjson")
        subprocess.run([a.a, "blast", "--out", path, "--count", str(a.events), "--seed", str(a.seed),
                        "--start", str(start)], check=True, stderr=subprocess.DEVNULL)
        with open(path, "a") as f:
            for line in edge_lines(a.events // 5, start, a.seed):
                f.write(line + "\n")
        # Whether an event counts for visits depends on its receive time (an import stamps
        # the time it runs) against `visit_late_allowance`: the largest allowance makes every
        # line of the last hour count wherever the two imports fall in time.
        allowance = 'visit_late_allowance = "7d"\n'
        c = os.path.join(work, "default.toml")
        open(c, "w").write("[agg]\n" + allowance)
        configs = [("default", c)]
        if a.keep_query:
            c = os.path.join(work, "keep.toml")
            open(c, "w").write("[agg]\n" + allowance + "url_keep_query = [%s]\n" % ", ".join(json.dumps(k) for k in a.keep_query.split(",")))
            configs.append(("url_keep_query=" + a.keep_query, c))
        frm = time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(start / 1000 - 60))
        to = time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(now_ms / 1000 + 120))
        total = same = 0
        first_diff = None
        for shards in a.shards:
            for name, config in configs:
                answers = []
                for label, binary in (("a", a.a), ("b", a.b)):
                    data = os.path.join(work, "%s-%d-%s" % (label, shards, name.split("=")[0]))
                    subprocess.run([binary, "import", "--data-dir", data, path, "--config", config],
                                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    s = Server(binary, data, shards, config)
                    try:
                        if label == "a":
                            qs = queries(s, frm, to)
                        answers.append([s.get(q) for q in qs])
                        errors = [(q, x) for q, x in zip(qs, answers[-1]) if x.startswith(b"HTTP ")]
                        if errors:
                            raise SystemExit("%s refused a query: %s -> %s" % (binary, errors[0][0], errors[0][1][:300]))
                    finally:
                        s.stop()
                n_same = sum(x == y for x, y in zip(*answers))
                total += len(qs)
                same += n_same
                print("shards %d, config %s: %d queries, %d identical answers" % (
                    shards, name, len(qs), n_same), flush=True)
                for i, (q, x, y) in enumerate(zip(qs, *answers)):
                    if x != y:
                        # Both answers whole, kept outside the work dir, to be diffed.
                        keep = os.path.join(ROOT, "target", "same-answers-differences")
                        os.makedirs(keep, exist_ok=True)
                        stem = os.path.join(keep, "%d-%s-%d" % (shards, name.split("=")[0], i))
                        for label, body in (("a", x), ("b", y)):
                            with open("%s-%s.json" % (stem, label), "wb") as f:
                                f.write(body)
                        print("DIFFERENT: shards %d, config %s: %s (both answers: %s-a.json, -b.json)" % (
                            shards, name, q, stem), flush=True)
                    if x != y and first_diff is None:
                        first_diff = (q, x[:400], y[:400])
        print(json.dumps({"queries": total, "identical": same,
                          "first_difference": [str(v) for v in first_diff] if first_diff else None}))
        sys.exit(0 if same == total else 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
