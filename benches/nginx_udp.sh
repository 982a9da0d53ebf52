#!/bin/bash
# The real shape of nginx's UDP traffic: one syslog datagram per hit, as nginx sends them
# (`access_log syslog:` with the log_format of config/nginx/pixel.conf), at whatever rate
# nginx reaches on one core. `pixeld blast` sends datagrams in bursts of rate/1000; nginx
# sends each hit on its own, which is what makes a shard wake per datagram.
#
#   apt-get install -y nginx wrk
#   benches/nginx_udp.sh BIN [CONNECTIONS] [SECONDS]
#
# pixeld (`BIN serve --shards 1`, extra arguments from $PIXELD_ARGS) is pinned to CPU 0;
# nginx (one worker) and wrk (one thread, CONNECTIONS connections, default 4, random urls
# among 5 000 and visitors among 50 000) share CPU 1. Prints pixeld's CPU-seconds per million
# hits received (utime + stime from /proc around the load), the hits received and answered,
# the kernel's drops and the rate. Run it for two builds in turn, several rounds, and compare
# medians: the machine is shared. Everything it starts is stopped by its PID.
set -euo pipefail
BIN=$1; CONNS=${2:-4}; SECS=${3:-8}
D=$(mktemp -d /tmp/nginx_udp.XXXX)
trap 'rm -rf "$D"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PU=$(free_port); PH=$(free_port); PT=$(free_port); PN=$(free_port)
cat > "$D/req.lua" <<'EOL'
math.randomseed(7)
request = function()
  local u = math.random(1, 5000)
  local v = math.random(1, 50000)
  return wrk.format("GET", "/p.gif?url=https%3A%2F%2Fexample.com%2Fnews%2Farticle-" .. u
    .. "&ref=https%3A%2F%2Fwww.google.com%2F&vid=v" .. v .. "&a=pv")
end
EOL
cat > "$D/nginx.conf" <<EOC
worker_processes 1;
worker_cpu_affinity 10;
pid $D/nginx.pid;
error_log $D/error.log;
events { worker_connections 1024; }
http {
  log_format pixel escape=json '{"msec":\$msec,"url":"\$arg_url","urlref":"\$arg_ref","vid":"\$arg_vid","action":"\$arg_a","inc":"\$arg_inc","name":"\$arg_n","props":"\$arg_p","ua":"\$http_user_agent","ip":"\$remote_addr"}';
  access_log off;
  server {
    listen 127.0.0.1:$PN;
    location = /p.gif { empty_gif; access_log syslog:server=127.0.0.1:$PU,tag=pixel,nohostname pixel; }
  }
}
EOC
# shellcheck disable=SC2086
taskset -c 0 "$BIN" serve --shards 1 --data-dir "$D/d" --udp 127.0.0.1:$PU --tcp 127.0.0.1:$PT \
  --http 127.0.0.1:$PH ${PIXELD_ARGS:-} > "$D/out" 2> "$D/err" &
P=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$PH/readyz" > /dev/null && break; sleep 0.1; done
nginx -c "$D/nginx.conf" -p "$D"
sleep 0.5
metric() { curl -s "127.0.0.1:$PH/metrics" | awk -v k="$1" 'index($0, k) == 1 {s += $2} END {print s + 0}'; }
r0=$(metric 'pixeld_received_events_total{transport="udp"')
a=$(awk '{print $14 + $15}' /proc/$P/stat)
taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$D/req.lua" "http://127.0.0.1:$PN/" > "$D/wrk" 2>&1
sleep 1
b=$(awk '{print $14 + $15}' /proc/$P/stat)
r1=$(metric 'pixeld_received_events_total{transport="udp"')
drops=$(metric 'pixeld_udp_kernel_drops_total')
reqs=$(awk '/requests in/ {print $1}' "$D/wrk")
kill "$(cat "$D/nginx.pid")"; kill $P; wait $P 2>/dev/null || true
python3 -c "n = $r1 - $r0; t = $(getconf CLK_TCK); print(f'{($b - $a) / t / (n / 1e6):.3f} CPU-s per million, {n:.0f} received, $reqs answered, $drops kernel drops, {n / $SECS:.0f}/s')"
