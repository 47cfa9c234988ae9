#!/usr/bin/env bash
# Kernel memory of N idle ssed streams: /proc/net/sockstat, /proc/meminfo and /proc/slabinfo with no
# stream, with N held, and after; per slab cache, the growth per connection. Split out of
# benches/compare.sh (which calls it with KERNEL=1) when that became a caller of `ssed-bench sweep`.
#
#   benches/kernel-memory.sh                      # N=10000, release builds already in target/release
#   N=2000 OUT=target/compare BIN=target/compare/bin benches/kernel-memory.sh
#
# Writes OUT/kernel.json (and the snapshots under OUT/kernel/). Needs jq; reading slabinfo needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
OUT=${OUT:-target/compare}
BIN=${BIN:-target/release}
BENCH_CPU=${BENCH_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
PORT=${PORT:-18180}
mkdir -p "$OUT"

. benches/common.sh

sub_url() {
    echo "http://127.0.0.1:$PORT/events?topic=bench"
}

start_server() {
    ensure_port_free
    taskset -c "$SERVER_CPU" "$BIN/ssed" --listen "127.0.0.1:$PORT" --heartbeat 0 >>"$OUT/servers.log" 2>&1 &
    server_pid=$!
    wait_until_listening ssed "$OUT/servers.log"
}

stop_peer() {
    stop_server
    sleep 1
}

KERNEL=1
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
