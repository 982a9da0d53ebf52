#!/bin/bash
# Query latency over a week of data, and the speed of a scan of the raw log (README,
# "Queries over a week"): 2 M events spread evenly over the last 7 days of event time go into
# one shard (pinned to CPU 0; the sender on CPU 1) over TCP, then 200 timed requests of each
# breakdown (median, p99) and three scans of the log. CUSTOM_EVENTS=0.05 (the default 0)
# makes that share of the pageviews custom events, and adds conversion-rate queries.
# Ports 39311-39313 on 127.0.0.1.
# Usage: benches/week_queries.sh [path/to/pixeld]   (default: target/release/pixeld)
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$HERE/target/release/pixeld}
D=$(mktemp -d)
taskset -c 0 $BIN serve --data-dir $D --shards 1 --udp 127.0.0.1:39311 --tcp 127.0.0.1:39312 --http 127.0.0.1:39313 2>$D/err &
P=$!
for i in $(seq 50); do grep -q "ready:" $D/err && break; sleep 0.2; done
START=$(( ($(date +%s) - 7*86400 + 600) * 1000 ))
CUSTOM_EVENTS=${CUSTOM_EVENTS:-0}
export CUSTOM_EVENTS
taskset -c 1 $BIN blast --count 2000000 --transport tcp --target 127.0.0.1:39312 --http 127.0.0.1:39313 --seed 7 --start $START --event-rate 3.3 --custom-events $CUSTOM_EVENTS 2>&1 | tail -1
sleep 5
curl -s 127.0.0.1:39313/metrics | grep -E "^pixeld_agg_(memory_bytes|cells) |outcome=\"(aggregated|out_of_window|bot)\""
python3 - <<'PY'
import time, http.client, statistics, json
get=["/v1/top?dim=channel,device&from=-7d&limit=100",
     "/v1/top?dim=device,browser&filter=channel:search&from=-7d&limit=100",
     "/v1/top?dim=channel&sort=visitors&from=-7d"]
post=[{"metrics":["views","visitors"],"dimensions":["channel","device"],"date_range":"7d"},
      {"metrics":["views","visitors"],"dimensions":["source","os"],"date_range":"7d","filters":[["not",["is","device",["desktop"]]]],"include":{"comparisons":"previous_period"}},
      {"metrics":["views"],"dimensions":["time:day","channel"],"date_range":"7d"}]
import os
if float(os.environ.get("CUSTOM_EVENTS", "0")) > 0:
    post += [{"metrics":["visitors","conversion_rate"],"dimensions":["channel"],"date_range":"7d","filters":[["is","event",["signup"]]]},
             {"metrics":["events","conversion_rate"],"dimensions":["event"],"date_range":"7d"}]
def run(method, path, body=None):
    ts=[]
    for i in range(200):
        c=http.client.HTTPConnection("127.0.0.1",39313); t=time.perf_counter()
        c.request(method,path,body=body); r=c.getresponse(); b=r.read(); ts.append(time.perf_counter()-t); c.close()
        assert r.status==200, b
    ts.sort()
    return statistics.median(ts)*1e3, ts[int(len(ts)*0.99)-1]*1e3, json.loads(b)
for q in get:
    m,p,b=run("GET",q); print("GET", q, "median %.2f ms p99 %.2f ms rows %s" % (m,p,b.get("total_rows")))
for i in range(3):
    q={"metrics":["views","visitors"],"dimensions":["url","channel"],"date_range":"7d","include":{"scan":True},"limit":10}
    c=http.client.HTTPConnection("127.0.0.1",39313,timeout=600); t=time.perf_counter()
    c.request("POST","/v1/query",body=json.dumps(q)); r=c.getresponse(); b=json.loads(r.read()); dt=time.perf_counter()-t
    print("SCAN url x channel 7d: %.2f s, meta.scan %s, rows %s" % (dt, b["meta"]["scan"], b["meta"]["total_rows"]))
for q in post:
    m,p,b=run("POST","/v1/query",json.dumps(q)); print("POST", json.dumps(q), "median %.2f ms p99 %.2f ms rows %s" % (m,p,b["meta"]["total_rows"]))
PY
kill $P; wait $P; rm -rf $D
