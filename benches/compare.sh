#!/usr/bin/env bash
# ssed against two other SSE broadcast servers on this machine, with the same load tool:
#   ssed          target/release/ssed --heartbeat 0
#   nchan         nginx + nchan, one worker (benches/peers/nchan.conf.in)
#   axum          benches/peers/axum (tokio current-thread runtime + axum's Sse), binary axum_sse
# Each server runs pinned to SERVER_CPU, ssed-bench to BENCH_CPU, a fresh server for every run, N
# subscribers on one topic. Scenarios (RUNS runs each; the table shows medians and ranges):
#   paced    EVENTS events of BODY bytes at RATE/s                    (the issue's 200 x 100 B at 5/s)
#   burst    EVENTS events back to back (--burst: each POST once the previous is answered)
#   rate50   EVENTS50 events at FAST_RATE/s                           (10k x 50/s offered)
# Every run also gives the server's RSS before any subscriber and with N idle ones. Then:
#   floor    `ssed-bench floor` at N, K=1 and K=8 (RUNS times): the bare cost of the writes
#   kernel   /proc/net/sockstat, /proc/meminfo and /proc/slabinfo with 0 and N idle ssed streams
#   sweep    ssed alone at each N of SWEEP: idle RSS per subscriber, paced and burst CPU per delivery
#   size     the stripped ssed binary
# JSON lines land in OUT (target/compare): runs.jsonl (one line per load run, with peer, scenario,
# run and the bench's exit status added), floor.jsonl, kernel.json, sweep.jsonl; the tables go to
# the terminal and to OUT/summary.md. Needs nginx, libnginx-mod-nchan and jq (Debian packages).
#
#   benches/compare.sh                                 # the full run: N=10000, 3 runs, sweep; ~40 min
#   N=2000 RUNS=1 EVENTS=50 SWEEP= benches/compare.sh   # a quick pass
#   PEERS="ssed axum" SCENARIOS=burst benches/compare.sh
#   SSED_BIN=/elsewhere/target/release/ssed PEERS=ssed benches/compare.sh   # another build of ssed
#
# CPU figures (per delivery, per write) are robust on a busy machine; wall-clock ones (latency,
# deliveries per second, walk time) are upper bounds: the "wait" columns (schedstat) say how long
# the server and the bench were runnable but waiting for their CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
RUNS=${RUNS:-3}
PEERS=${PEERS:-ssed nchan axum}
SCENARIOS=${SCENARIOS:-paced burst rate50}
EVENTS=${EVENTS:-200}
EVENTS50=${EVENTS50:-200}
RATE=${RATE:-5}
FAST_RATE=${FAST_RATE:-50}
BODY=${BODY:-100}
SWEEP=${SWEEP-1000 5000 10000 19500}
SWEEP_EVENTS=${SWEEP_EVENTS:-50}
FLOOR=${FLOOR:-1}
KERNEL=${KERNEL:-1}
BENCH_CPU=${BENCH_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
PORT=${PORT:-18180}
OUT=${OUT:-target/compare}
TOPIC=bench

for tool in jq nginx taskset; do
    command -v "$tool" >/dev/null || { echo "compare.sh: $tool is needed (apt-get install jq nginx libnginx-mod-nchan)" >&2; exit 2; }
done
[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || [[ " $PEERS " != *" nchan "* ]] ||
    { echo "compare.sh: nchan is missing (apt-get install libnginx-mod-nchan)" >&2; exit 2; }

# Separate builds: the peer's dependencies never unify features into the ssed that is measured.
cargo build --release -p ssed-server -p ssed-bench
if [[ " $PEERS " == *" axum "* ]]; then cargo build --release -p ssed-axum-peer; fi
# Run copies, so a rebuild by someone else during a long run cannot swap the binaries under it.
# SSED_BIN measures another build of ssed (an older commit's, for a before/after comparison).
mkdir -p "$OUT/bin"
cp "${SSED_BIN:-target/release/ssed}" "$OUT/bin/ssed"
cp target/release/ssed-bench "$OUT/bin/"
if [[ " $PEERS " == *" axum "* ]]; then cp target/release/axum_sse "$OUT/bin/"; fi
BIN=$OUT/bin
: >"$OUT/runs.jsonl"
: >"$OUT/floor.jsonl"
: >"$OUT/sweep.jsonl"
: >"$OUT/servers.log"
{
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (with local changes)')${SSED_BIN:+; ssed measured: $SSED_BIN}"
    echo "cpu $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; kernel $(uname -r)"
    echo "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), nchan $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo '?')"
    echo "RLIMIT_NOFILE hard $(ulimit -Hn); N=$N RUNS=$RUNS EVENTS=$EVENTS EVENTS50=$EVENTS50 RATE=$RATE FAST_RATE=$FAST_RATE BODY=$BODY"
    echo "started $(date -u +%FT%TZ)"
} >"$OUT/meta.txt"

. benches/common.sh

# The subscribe and publish URLs of a peer.
sub_url() {
    echo "http://127.0.0.1:$PORT/events?topic=$TOPIC"
}
pub_url() {
    case $1 in
        nchan) echo "http://127.0.0.1:$PORT/pub?topic=$TOPIC" ;;
        *) echo "http://127.0.0.1:$PORT/events?topic=$TOPIC" ;;
    esac
}

start_server() {
    local peer=$1
    ensure_port_free
    echo "== start $peer $(date -u +%T)" >>"$OUT/servers.log"
    case $peer in
        ssed)
            taskset -c "$SERVER_CPU" "$BIN/ssed" --listen "127.0.0.1:$PORT" --heartbeat 0 \
                >>"$OUT/servers.log" 2>&1 &
            ;;
        nchan)
            local prefix=$PWD/$OUT/nchan-prefix
            rm -rf "$prefix"
            mkdir -p "$prefix"
            sed -e "s#@PREFIX@#$prefix#g" -e "s/@PORT@/$PORT/g" -e "s/@NOFILE@/$(ulimit -Hn)/g" \
                benches/peers/nchan.conf.in >"$prefix/nginx.conf"
            taskset -c "$SERVER_CPU" nginx -p "$prefix" -c "$prefix/nginx.conf" >>"$OUT/servers.log" 2>&1 &
            ;;
        axum)
            taskset -c "$SERVER_CPU" "$BIN/axum_sse" "127.0.0.1:$PORT" --runtime current \
                >>"$OUT/servers.log" 2>&1 &
            ;;
        *)
            echo "compare.sh: unknown peer $peer" >&2
            exit 2
            ;;
    esac
    server_pid=$!
    wait_until_listening "$peer" "$OUT/servers.log"
}

stop_peer() {
    stop_server
    # A stopped server's sockets linger in TIME_WAIT on the bench's side only (the client closes
    # last); a short pause lets the kernel settle before the next ramp.
    sleep 1
}

# One load run against a fresh server: bench_run PEER SCENARIO RUN N FILE [ssed-bench flags...].
# Exit statuses 1 (an event lost, doubled or reordered), 3 (cut short by --duration) and 4 (fewer
# streams than asked) are recorded in the JSON line, not fatal.
bench_run() {
    local peer=$1 scenario=$2 run=$3 n=$4 file=$5
    shift 5
    start_server "$peer"
    echo "== $peer $scenario run $run: N=$n, $peer pid $server_pid on CPU $SERVER_CPU, bench on CPU $BENCH_CPU ($(date -u +%T))"
    local status=0 line
    line=$(taskset -c "$BENCH_CPU" "$BIN/ssed-bench" --url "$(sub_url)" --connections "$n" \
        --server-pid "$server_pid" --body-size "$BODY" --json --quiet "$@" 2>"$OUT/last-table.txt") ||
        status=$?
    stop_peer
    sed 's/^/   /' "$OUT/last-table.txt"
    if [ -z "$line" ]; then
        echo "!! $peer $scenario run $run: ssed-bench failed with status $status"
        line='{}'
    elif [ "$status" -ne 0 ]; then
        echo "!! $peer $scenario run $run: ssed-bench exit status $status (1 lost/doubled/reordered, 3 cut by --duration, 4 fewer streams)"
    fi
    jq -c --arg peer "$peer" --arg scenario "$scenario" --argjson run "$run" --argjson status "$status" \
        --argjson n "$n" '. + {peer: $peer, scenario: $scenario, run: $run, n: $n, status: $status}' \
        <<<"$line" >>"$file"
}

scenario_flags() {
    case $1 in
        paced) echo "--events $EVENTS --rate $RATE --duration 150" ;;
        burst) echo "--events $EVENTS --burst --duration 120" ;;
        rate50) echo "--events $EVENTS50 --rate $FAST_RATE --drain 60 --duration 180" ;;
        *)
            echo "compare.sh: unknown scenario $1" >&2
            exit 2
            ;;
    esac
}

# The load runs, interleaved by run so that a noisy stretch of the machine hits every peer alike.
for run in $(seq "$RUNS"); do
    for scenario in $SCENARIOS; do
        for peer in $PEERS; do
            # shellcheck disable=SC2046
            bench_run "$peer" "$scenario" "$run" "$N" "$OUT/runs.jsonl" \
                --publish-url "$(pub_url "$peer")" $(scenario_flags "$scenario")
        done
    done
done

floor() {
    local n=$1 k=$2 file=$3
    taskset -c "$SERVER_CPU,$BENCH_CPU" "$BIN/ssed-bench" floor --connections "$n" --writes-per-syscall "$k" \
        --size "$BODY" --writer-cpu "$SERVER_CPU" --reader-cpu "$BENCH_CPU" --json >>"$file"
}

if [ "$FLOOR" = 1 ]; then
    echo "== floor: N=$N, writer on CPU $SERVER_CPU, reader on CPU $BENCH_CPU"
    for _ in $(seq "$RUNS"); do
        for k in 1 8; do
            floor "$N" "$k" "$OUT/floor.jsonl"
        done
    done
fi

# Kernel memory of N idle connections: snapshots with no stream and with N ssed streams held.
snapshot() {
    local dir=$1
    mkdir -p "$dir"
    cat /proc/net/sockstat >"$dir/sockstat"
    cat /proc/meminfo >"$dir/meminfo"
    cat /proc/slabinfo >"$dir/slabinfo"
}

metric() {
    local body
    body=$(exec 3<>"/dev/tcp/127.0.0.1/$PORT" && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3) || return 0
    awk -v m="$1" '$1 == m {print $2}' <<<"$body"
}

if [ "$KERNEL" = 1 ]; then
    echo "== kernel memory: N=$N idle ssed streams"
    start_server ssed
    snapshot "$OUT/kernel/before"
    taskset -c "$BENCH_CPU" "$BIN/ssed-bench" --url "$(sub_url)" --connections "$N" --server-pid "$server_pid" \
        --settle 10 --duration 60 --json --quiet >"$OUT/kernel/bench.json" 2>/dev/null &
    bench_pid=$!
    for _ in $(seq 600); do
        [ "$(metric ssed_subscribers)" = "$N" ] && break
        sleep 0.1
    done
    sleep 2
    snapshot "$OUT/kernel/held"
    echo "   $(metric ssed_subscribers) streams held at the snapshot"
    wait "$bench_pid" || true
    stop_peer
    sleep 2
    snapshot "$OUT/kernel/after"
    # Per slab cache: the growth in bytes of active objects and of whole slabs, per connection. Both
    # ends of every connection live on this machine, so a connection is two sockets.
    # The baseline is the mean of the snapshots before and after, which halves the drift of other
    # work on the machine.
    jq -n --argjson n "$N" --rawfile before "$OUT/kernel/before/slabinfo" --rawfile held "$OUT/kernel/held/slabinfo" \
        --rawfile after "$OUT/kernel/after/slabinfo" \
        --rawfile sb "$OUT/kernel/before/sockstat" --rawfile sh "$OUT/kernel/held/sockstat" \
        --rawfile sa "$OUT/kernel/after/sockstat" \
        --rawfile mb "$OUT/kernel/before/meminfo" --rawfile mh "$OUT/kernel/held/meminfo" \
        --rawfile ma "$OUT/kernel/after/meminfo" '
        def slabs($t): [$t | split("\n")[2:][] | select(length > 0) | split(" ") | map(select(length > 0))
            | {key: .[0], value: {active: (.[1] | tonumber), size: (.[3] | tonumber),
               slabs: (.[14] | tonumber), pages: (.[5] | tonumber)}}] | from_entries;
        def meminfo($t): [$t | split("\n")[] | select(length > 0) | capture("^(?<k>[^:]+): +(?<v>[0-9]+)")
            | {key: .k, value: (.v | tonumber * 1024)}] | from_entries;
        def tcp($t): $t | split("\n")[] | select(startswith("TCP:")) | split(" ")
            | {inuse: (.[2] | tonumber), tw: (.[6] | tonumber), alloc: (.[8] | tonumber), mem_pages: (.[10] | tonumber)};
        def mean2($x; $y): ($x + $y) / 2;
        (slabs($before)) as $a | (slabs($after)) as $z | (slabs($held)) as $b |
        (meminfo($mb)) as $m0 | (meminfo($ma)) as $m2 | (meminfo($mh)) as $m1 |
        {connections: $n,
         sockstat_before: tcp($sb), sockstat_held: tcp($sh), sockstat_after: tcp($sa),
         slab_bytes_per_connection: ((($m1.Slab - mean2($m0.Slab; $m2.Slab)) / $n) | round),
         sunreclaim_bytes_per_connection: ((($m1.SUnreclaim - mean2($m0.SUnreclaim; $m2.SUnreclaim)) / $n) | round),
         caches: [$b | to_entries[] | select($a[.key] != null and $z[.key] != null)
            | (mean2($a[.key].active; $z[.key].active)) as $base
            | (mean2($a[.key].slabs; $z[.key].slabs)) as $base_slabs
            | {cache: .key, size: .value.size,
               objects_per_connection: (((.value.active - $base) / $n * 100 | round) / 100),
               active_bytes_per_connection: (((.value.active - $base) * .value.size / $n) | round),
               slab_bytes_per_connection: (((.value.slabs - $base_slabs) * .value.pages * 4096 / $n) | round)}
            | select(.active_bytes_per_connection >= 8 or .slab_bytes_per_connection >= 8)]
            | sort_by(-.active_bytes_per_connection)}' >"$OUT/kernel.json"
fi

if [ -n "$SWEEP" ]; then
    for n in $SWEEP; do
        echo "== sweep: ssed at N=$n"
        bench_run ssed sweep-paced 1 "$n" "$OUT/sweep.jsonl" --publish-url "$(pub_url ssed)" \
            --events "$SWEEP_EVENTS" --rate "$RATE" --duration 120
        bench_run ssed sweep-burst 1 "$n" "$OUT/sweep.jsonl" --publish-url "$(pub_url ssed)" \
            --events "$EVENTS" --burst --duration 120
        floor "$n" 1 "$OUT/sweep.jsonl"
    done
fi

strip -o "$OUT/ssed.stripped" "$BIN/ssed"
stripped=$(stat -c %s "$OUT/ssed.stripped")
echo "finished $(date -u +%FT%TZ); stripped ssed $stripped bytes" >>"$OUT/meta.txt"

benches/compare-report.sh "$OUT" | tee "$OUT/summary.md"
