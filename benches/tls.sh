#!/usr/bin/env bash
# The TLS rows of docs/benchmarks.md, on loopback: ssed serving TLS itself (--tls-listen beside a plain
# --listen) and, when nginx with libnginx-mod-nchan is installed, nginx + nchan serving TLS, measured
# in the same run with the same clients (benches/tls-clients.py, Python asyncio + OpenSSL).
#
#   1. RSS per idle TLS subscriber at IDLE streams (default 10,000), and per idle plain one
#   2. server CPU per delivery: SUBS streams (default 1,000) x EVENTS events (default 200), TLS and plain
#   3. publish -> delivery latency of SUBS plain streams (ssed-bench, EVENTS_PER_S events/s) alone and
#      while FLOOD (default 5,000) new TLS clients connect at once (ssed only)
#
# Usage: benches/tls.sh [OUT]   (builds ssed and ssed-bench in release mode first; output in OUT,
# default target/tls-bench; SKIP_SSED=1 measures nginx + nchan only, SKIP_NCHAN=1 ssed only).
# Every run stops by itself; loopback only. Noisy on a shared machine:
# record the figures with the command line.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/tls-bench}
IDLE=${IDLE:-10000}
SUBS=${SUBS:-1000}
EVENTS=${EVENTS:-200}
FLOOD=${FLOOD:-5000}
EVENTS_PER_S=${EVENTS_PER_S:-20}
PLAIN=${PLAIN:-18780}
TLS=${TLS:-18743}
NCHAN_PLAIN=${NCHAN_PLAIN:-18781}
NCHAN_TLS=${NCHAN_TLS:-18744}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

cargo build --release -q -p ssed-server -p ssed-bench
SSED=target/release/ssed
BENCH=target/release/ssed-bench
CLIENTS="python3 benches/tls-clients.py"

# A CA and a P-256 certificate for localhost and 127.0.0.1, made for this run.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$OUT/ca-key.pem" \
    -out "$OUT/ca.pem" -days 1 -subj "/CN=ssed bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$OUT/key.pem" \
    -out "$OUT/req.csr" -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$OUT/ext"
openssl x509 -req -in "$OUT/req.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca-key.pem" -CAcreateserial -days 1 \
    -extfile "$OUT/ext" -out "$OUT/cert.pem" 2>/dev/null
CA=$OUT/ca.pem

rss_kib() { # the VmRSS of every PID given, summed
    local total=0
    for pid in "$@"; do total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status"))); done
    echo "$total"
}
cpu_ticks() { # utime + stime of every PID given, in clock ticks
    local total=0
    for pid in "$@"; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
    echo "$total"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# Idle streams held by tls-clients.py: prints bytes per stream.
idle() { # PORT CA_OR_DASH PIDS...
    local port=$1 ca=$2; shift 2
    local before fifo=$OUT/hold.fifo
    before=$(rss_kib "$@")
    rm -f "$fifo"; mkfifo "$fifo"
    $CLIENTS hold "$port" "$IDLE" "$ca" <"$fifo" >"$OUT/hold.out" &
    local holder=$!
    exec 7>"$fifo"
    timeout 300 bash -c "until grep -q ready '$OUT/hold.out'; do sleep 0.2; done"
    sleep 2
    local after; after=$(rss_kib "$@")
    exec 7>&-
    wait "$holder" || true
    echo $(((after - before) * 1024 / IDLE))
}

# SUBS streams, EVENTS events: prints server CPU µs per delivery.
deliver() { # PORT CA_OR_DASH PUBPORT PIDS...
    local port=$1 ca=$2 pub=$3; shift 3
    local log=$OUT/deliver.out start=0
    : >"$log"
    $CLIENTS deliver "$port" "$SUBS" "$ca" "$EVENTS" "$pub" >"$log" &
    local client=$!
    timeout 300 bash -c "until grep -q publishing '$log'; do sleep 0.05; done"
    start=$(cpu_ticks "$@")
    wait "$client"
    local used=$(( $(cpu_ticks "$@") - start ))
    awk -v t="$used" -v us="$TICK_US" -v n=$((SUBS * EVENTS)) 'BEGIN { printf "%.2f", t * us / n }'
}

summary=$OUT/summary.md
{
    echo "# TLS benchmark, $(date -u +%FT%TZ)"
    echo
    echo "IDLE=$IDLE SUBS=$SUBS EVENTS=$EVENTS FLOOD=$FLOOD EVENTS_PER_S=$EVENTS_PER_S; $(nproc) CPUs, $(uname -r);"
    echo "$(openssl version); python $(python3 -c 'import sys; print(sys.version.split()[0])')"
    echo
} >"$summary"

# ----- ssed -----
# A fresh server for each measurement, so memory freed by one does not hide the next one's.
start_ssed() {
    $SSED --listen 127.0.0.1:$PLAIN --tls-listen 127.0.0.1:$TLS --tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem" \
        --heartbeat 0 --max-connections 40000 2>"$OUT/ssed.log" &
    SSED_PID=$!
    timeout 10 bash -c "until grep -q listening '$OUT/ssed.log'; do sleep 0.05; done"
}
stop_ssed() { kill $SSED_PID; wait $SSED_PID 2>/dev/null || true; }
trap 'kill ${SSED_PID:-} 2>/dev/null || true; [ -n "${NGINX_PID:-}" ] && kill $NGINX_PID 2>/dev/null || true' EXIT

if [ -z "${SKIP_SSED:-}" ]; then
start_ssed; base_rss=$(rss_kib $SSED_PID); ssed_idle_tls=$(idle $TLS "$CA" $SSED_PID); stop_ssed
start_ssed; ssed_idle_plain=$(idle $PLAIN - $SSED_PID); stop_ssed
start_ssed; ssed_cpu_tls=$(deliver $TLS "$CA" $PLAIN $SSED_PID); stop_ssed
start_ssed; ssed_cpu_plain=$(deliver $PLAIN - $PLAIN $SSED_PID); stop_ssed

# Latency of SUBS plain streams (ssed-bench, 10 s at EVENTS_PER_S): alone, then with two blasts of
# FLOOD ClientHellos (all sent at once on connections opened beforehand, 4 s into the run): the
# server gets thousands of handshakes to start in the same instant, which is what its per-turn
# budget is for. Then FLOOD complete TLS connections as fast as Python makes them, for the
# handshake rate. ssed-bench's own exit status goes to bench-*.err, not fatal.
run_bench() {
    $BENCH --url "http://127.0.0.1:$PLAIN/events?topic=lat" --connections "$SUBS" \
        --publish-url "http://127.0.0.1:$PLAIN/events?topic=lat" --events $((EVENTS_PER_S * 10)) --rate "$EVENTS_PER_S" \
        --server-pid $SSED_PID --duration 60 --json --quiet 2>"$OUT/bench-$1.err" || echo "{\"exit\": $?}" >>"$OUT/bench-$1.err"
}
start_ssed
alone=$(run_bench alone)
( sleep 4; $CLIENTS blast $TLS "$FLOOD" "$CA"; $CLIENTS blast $TLS "$FLOOD" "$CA" ) >"$OUT/blast.out" &
flooder=$!
flooded=$(run_bench blast)
wait $flooder
$CLIENTS flood $TLS "$FLOOD" "$CA" >"$OUT/flood.out"
stop_ssed
p99() { echo "$1" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print('%.1f / %.1f / %.1f' % (d['latency_p50_us']/1000, d['latency_p99_us']/1000, d['latency_max_us']/1000))" 2>/dev/null || echo "failed: $1"; }

{
    echo "| | ssed |"
    echo "|---|---|"
    echo "| RSS, no subscriber | $base_rss KiB |"
    echo "| RSS per idle TLS subscriber ($IDLE) | $ssed_idle_tls B |"
    echo "| RSS per idle plain subscriber ($IDLE) | $ssed_idle_plain B |"
    echo "| server CPU per delivery, TLS ($SUBS x $EVENTS) | $ssed_cpu_tls µs |"
    echo "| server CPU per delivery, plain | $ssed_cpu_plain µs |"
    echo "| latency p50 / p99 / max ms, $SUBS plain streams, $EVENTS_PER_S events/s | $(p99 "$alone") |"
    echo "| the same with two blasts of $FLOOD ClientHellos | $(p99 "$flooded") |"
    echo "| the blasts | $(tr '\n' ';' <"$OUT/blast.out") |"
    echo "| complete TLS connections | $(cat "$OUT/flood.out") |"
} >>"$summary"
fi

# ----- nginx + nchan, TLS -----
if [ -z "${SKIP_NCHAN:-}" ] && [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] && command -v nginx >/dev/null; then
    prefix=$PWD/$OUT/nchan-prefix
    mkdir -p "$prefix"
    sed -e "s#@PREFIX@#$prefix#g" -e "s/@PORT@/$NCHAN_PLAIN/" -e "s/@NOFILE@/40000/" \
        -e "s#listen 127.0.0.1:$NCHAN_PLAIN backlog=4096;#listen 127.0.0.1:$NCHAN_PLAIN backlog=4096;\n        listen 127.0.0.1:$NCHAN_TLS ssl backlog=4096;\n        ssl_certificate $PWD/$OUT/cert.pem;\n        ssl_certificate_key $PWD/$OUT/key.pem;\n        ssl_protocols TLSv1.2 TLSv1.3;#" \
        benches/peers/nchan.conf.in >"$prefix/nginx.conf"
    nginx -p "$prefix" -c "$prefix/nginx.conf" 2>"$OUT/nginx.log" &
    NGINX_PID=$!
    timeout 10 bash -c "until [ -s '$prefix/nginx.pid' ] && pgrep -P $NGINX_PID >/dev/null; do sleep 0.05; done"
    sleep 0.5
    pids="$NGINX_PID $(pgrep -P $NGINX_PID | tr '\n' ' ')"
    nchan_base=$(rss_kib $pids)
    nchan_idle_tls=$(idle $NCHAN_TLS "$CA" $pids)
    nchan_cpu_tls=$(PUBPATH=/pub?topic=d deliver $NCHAN_TLS "$CA" $NCHAN_PLAIN $pids)
    nchan_cpu_plain=$(PUBPATH=/pub?topic=d deliver $NCHAN_PLAIN - $NCHAN_PLAIN $pids)
    kill $NGINX_PID; wait $NGINX_PID 2>/dev/null || true
    {
        echo
        echo "| | nginx + nchan (master + worker) |"
        echo "|---|---|"
        echo "| RSS, no subscriber | $nchan_base KiB |"
        echo "| RSS per idle TLS subscriber ($IDLE) | $nchan_idle_tls B |"
        echo "| server CPU per delivery, TLS ($SUBS x $EVENTS) | $nchan_cpu_tls µs |"
        echo "| server CPU per delivery, plain | $nchan_cpu_plain µs |"
    } >>"$summary"
fi
cat "$summary"
