#!/usr/bin/env bash
# Density and fan-out numbers for ssed on this machine, from a release build:
#   (a) ssed's RSS with 0 and with N idle subscribers on one topic -> bytes per subscriber;
#   (b) how long one publish takes to reach all N (20 events at 5/s), then bursts of back-to-back
#       and of pipelined publishes -> latency, deliveries per second, server CPU per delivery;
#   (c) `ssed-bench floor`: the CPU cost of the bare writes such a fan-out needs, with no server;
#   and the stripped size of the binary.
# ssed runs pinned to SERVER_CPU and the bench to BENCH_CPU, a fresh server for each run. The JSON
# lines land in OUT (target/density); the script prints a summary (with jq when it is installed).
# CPU figures (per delivery, per write) are robust; wall-clock ones (latency, walk time) stretch
# with other work on the machine, which the "waits for a CPU" figures (schedstat) show.
#
#   benches/density.sh                         # N=10000 on 127.0.0.1:8080
#   N=2000 PORT=8090 benches/density.sh
#
# Each process holds about N descriptors (the bench its clients, ssed its subscribers), so N must
# stay under `ulimit -Hn` minus a few dozen; the floor's reader becomes a child process when 2N
# descriptors do not fit in one.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-8080}
N=${N:-10000}
BENCH_CPU=${BENCH_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
BURST_EVENTS=${BURST_EVENTS:-50}
OUT=${OUT:-target/density}
URL="http://127.0.0.1:$PORT/events?topic=density"

cargo build --release -p ssed-server -p ssed-bench
mkdir -p "$OUT"

. benches/common.sh

start_server() {
    ensure_port_free
    taskset -c "$SERVER_CPU" target/release/ssed --listen "127.0.0.1:$PORT" --heartbeat 0 \
        >>"$OUT/ssed.log" 2>&1 &
    server_pid=$!
    wait_until_listening ssed "$OUT/ssed.log"
}

# One load run against a fresh server; the JSON line goes to $OUT/$1.json, the table to the terminal.
# Exit statuses 1 (an event lost, doubled or reordered), 3 (cut short by --duration) and 4 (fewer
# streams held than asked) are reported, not fatal, so the other numbers still come out.
run_bench() {
    local name=$1
    shift
    start_server
    echo "== $name: ssed pid $server_pid on CPU $SERVER_CPU, bench on CPU $BENCH_CPU"
    local status=0
    taskset -c "$BENCH_CPU" target/release/ssed-bench --url "$URL" --connections "$N" \
        --server-pid "$server_pid" --duration 120 --json --quiet "$@" >"$OUT/$name.json" || status=$?
    stop_server
    if [ "$status" -eq 1 ]; then
        echo "!! $name: events were lost, duplicated or reordered (see above)"
    elif [ "$status" -eq 3 ]; then
        echo "!! $name: cut short by --duration; its figures cover part of the run"
    elif [ "$status" -eq 4 ]; then
        echo "!! $name: fewer than $N streams were held (see above)"
    elif [ "$status" -ne 0 ]; then
        echo "!! $name: ssed-bench failed with status $status"
        exit "$status"
    fi
}

run_bench rate --publish-url "$URL" --events 20 --rate 5
run_bench burst --publish-url "$URL" --events "$BURST_EVENTS" --burst
run_bench pipeline --publish-url "$URL" --events "$BURST_EVENTS" --pipeline

echo "== floor: writer on CPU $SERVER_CPU, reader on CPU $BENCH_CPU"
for k in 1 8; do
    taskset -c "$SERVER_CPU,$BENCH_CPU" target/release/ssed-bench floor --connections "$N" \
        --writes-per-syscall "$k" --writer-cpu "$SERVER_CPU" --reader-cpu "$BENCH_CPU" --json \
        >"$OUT/floor-k$k.json"
done

strip -o "$OUT/ssed.stripped" target/release/ssed
stripped=$(stat -c %s "$OUT/ssed.stripped")

echo
echo "== summary (N=$N; JSON in $OUT)"
if command -v jq >/dev/null; then
    ms='if . == null then null else (. / 1000 * 10 | round / 10) end'
    jq -r '"(a) ssed RSS: \(.rss_before_bytes) B with no subscriber, \(.rss_idle_bytes) B with \(.held_at_sample) idle subscribers: \(.bytes_per_subscriber) B per subscriber"' "$OUT/rate.json"
    for name in rate burst pipeline; do
        jq -r --arg n "$name" "def ms: $ms; "'"(b) \($n): \(.accepted) events x \(.held) streams: \(.deliveries)/\(.expected_deliveries) delivered (missing \(.missing), duplicates \(.duplicates), out of order \(.out_of_order)); one publish reaches all in \(.reach_all_p50_us | ms) ms median, \(.reach_all_max_us | ms) ms worst; latency p50 \(.latency_p50_us | ms) ms, p90 \(.latency_p90_us | ms) ms, p99 \(.latency_p99_us | ms) ms, max \(.latency_max_us | ms) ms; \(.deliveries_per_s) deliveries/s; server \(.server_cpu_s_per_million) CPU-s and \(.server_user_s_per_million) user-s per million deliveries (on-CPU \(.server_sched_s_per_million) s); waits for a CPU over the fan-out: server \(.server_wait_s) s, bench \(.bench_wait_s) s"' "$OUT/$name.json"
    done
    for k in 1 8; do
        jq -r '"(c) floor, \(.writes_per_syscall) event(s) of \(.size) B per syscall: \(.cpu_us_per_write) CPU-us per write, \(.cpu_us_per_event) per event; walk over \(.connections) sockets: \(.walk_ms_median) ms median, \(.walk_ms_min) ms fastest (writer waited \(.writer_wait_ms) ms for its CPU)"' "$OUT/floor-k$k.json"
    done
else
    cat "$OUT"/rate.json "$OUT"/burst.json "$OUT"/pipeline.json "$OUT"/floor-k1.json "$OUT"/floor-k8.json
fi
echo "stripped target/release/ssed: $stripped bytes"
