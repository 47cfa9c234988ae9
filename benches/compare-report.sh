#!/usr/bin/env bash
# The tables of benches/compare.sh, from the JSON lines it left in OUT (default target/compare):
#   benches/compare-report.sh [OUT]
# Each cell is the median over runs, with the range [min–max] when there was more than one run.
set -euo pipefail
OUT=${1:-target/compare}

common='
def med: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
    else (.[length / 2 - 1] + .[length / 2]) / 2 end;
def r($d): if . == null then null else (. * pow(10; $d) | round) / pow(10; $d) end;
def cell($d): map(select(. != null)) | if length == 0 then "–"
    elif length == 1 or (min == max) then "\(.[0] | r($d))"
    else "\(med | r($d)) [\(min | r($d))–\(max | r($d))]" end;
def medr($d): map(select(. != null)) | med | r($d);
'

floor_k() { # floor_k K FIELD: the median of FIELD over the floor runs with K writes per syscall
    jq -s --argjson k "$1" "$common"' map(select(.writes_per_syscall == $k) | .'"$2"') | medr(4)' \
        "$OUT/floor.jsonl" 2>/dev/null || echo null
}

echo "# ssed-bench comparison"
echo
sed 's/^/    /' "$OUT/meta.txt"
echo

f1_cpu=$(floor_k 1 cpu_us_per_write)
f1_walk=$(floor_k 1 walk_ms_median)
f8_event=$(floor_k 8 cpu_us_per_event)
f8_walk=$(floor_k 8 walk_ms_median)
if [ -s "$OUT/floor.jsonl" ]; then
    echo "## Floor (ssed-bench floor, writer pinned like the servers)"
    echo
    echo "| K events per syscall | connections | CPU µs per write | CPU µs per event | walk ms (median of rounds) | writer waited ms |"
    echo "|---|---|---|---|---|---|"
    jq -s -r "$common"'group_by(.writes_per_syscall)[] |
        "| \(.[0].writes_per_syscall) | \(.[0].connections) | \(map(.cpu_us_per_write) | cell(3)) | \(map(.cpu_us_per_event) | cell(3)) | \(map(.walk_ms_median) | cell(2)) | \(map(.writer_wait_ms) | cell(1)) |"' \
        "$OUT/floor.jsonl"
    echo
fi

if [ -s "$OUT/runs.jsonl" ]; then
    echo "## Idle memory (every load run samples the server before the first subscriber and with all N idle)"
    echo
    echo "| server | runs | RSS, no subscriber (MiB) | RSS, N idle (MiB) | bytes per idle subscriber |"
    echo "|---|---|---|---|---|"
    jq -s -r "$common"'group_by(.peer)[] |
        "| \(.[0].peer) | \(length) | \(map(.rss_before_bytes / 1048576) | cell(2)) | \(map(.rss_idle_bytes / 1048576) | cell(1)) | \(map(.bytes_per_subscriber) | cell(0)) |"' \
        "$OUT/runs.jsonl"
    echo

    for scenario in paced burst rate50; do
        jq -e -s --arg s "$scenario" 'any(.scenario == $s)' "$OUT/runs.jsonl" >/dev/null || continue
        echo "## $scenario"
        echo
        echo "| server | held | delivered / expected | missing, dup, reorder | p50 ms | p99 ms | max ms | p99 from schedule ms | publishing took s | reach all, worst ms | deliveries/s | CPU µs per delivery | user µs per delivery | CPU ÷ floor (K=1) | p99 ÷ floor walk | waits s: server / bench | bench CPU µs per delivery |"
        echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        jq -s -r --arg s "$scenario" --argjson fcpu "$f1_cpu" --argjson fwalk "$f1_walk" "$common"'
            map(select(.scenario == $s)) | group_by(.peer)[] |
            "| \(.[0].peer) | \(map(.held) | cell(0)) | \(map(.deliveries) | add) / \(map(.expected_deliveries) | add)" +
            " | \(map(.missing) | add), \(map(.duplicates) | add), \(map(.out_of_order) | add)" +
            " | \(map(.latency_p50_us / 1000) | cell(2)) | \(map(.latency_p99_us / 1000) | cell(2))" +
            " | \(map(.latency_max_us / 1000) | cell(1))" +
            " | \(map(if .schedule_p99_us == null then null else .schedule_p99_us / 1000 end) | cell(1)) | \(map(.publish_s) | cell(2))" +
            " | \(map(.reach_all_max_us / 1000) | cell(1))" +
            " | \(map(.deliveries_per_s) | cell(0)) | \(map(.server_cpu_s_per_million) | cell(3))" +
            " | \(map(.server_user_s_per_million) | cell(3))" +
            " | \(if $fcpu then map(.server_cpu_s_per_million / $fcpu) | cell(2) else "–" end)" +
            " | \(if $fwalk then map(.latency_p99_us / 1000 / $fwalk) | cell(2) else "–" end)" +
            " | \(map(.server_wait_s) | cell(2)) / \(map(.bench_wait_s) | cell(2))" +
            " | \(map(if .deliveries > 0 and .bench_cpu_s != null then .bench_cpu_s * 1e6 / .deliveries else null end) | cell(3)) |"' \
            "$OUT/runs.jsonl"
        statuses=$(jq -s -r --arg s "$scenario" 'map(select(.scenario == $s and .status != 0)) | map("\(.peer) run \(.run): exit \(.status), ended \(.ended_reasons), publish errors \(.publish_errors), connect errors \(.connect_error_reasons)") | .[]' "$OUT/runs.jsonl")
        if [ -n "$statuses" ]; then
            echo
            echo "Runs that did not exit 0:"
            sed 's/^/- /' <<<"$statuses"
        fi
        echo
    done
    echo "Floor used for the ratios: $f1_cpu CPU µs per write and a walk of $f1_walk ms (K=1); K=8: $f8_event µs per event, walk $f8_walk ms."
    echo
fi

if [ -s "$OUT/kernel.json" ]; then
    echo "## Kernel memory with N idle ssed streams (both ends on this machine: a connection is two sockets)"
    echo
    jq -r '"sockstat TCP before: \(.sockstat_before); held: \(.sockstat_held); after: \(.sockstat_after)\n\n" +
        "Slab (meminfo) growth: \(.slab_bytes_per_connection) B per connection, of which unreclaimable \(.sunreclaim_bytes_per_connection) B\n\n" +
        "| cache | object size | objects per connection | active bytes per connection | slab bytes per connection |\n|---|---|---|---|---|\n" +
        ([.caches[] | "| \(.cache) | \(.size) | \(.objects_per_connection) | \(.active_bytes_per_connection) | \(.slab_bytes_per_connection) |"] | join("\n"))' \
        "$OUT/kernel.json"
    echo
fi

if [ -s "$OUT/sweep.jsonl" ]; then
    echo "## ssed density sweep (one run per N)"
    echo
    echo "| N | RSS, none (MiB) | RSS, N idle (MiB) | bytes per idle subscriber | paced: CPU µs / user µs per delivery | paced p99 ms | floor µs per write at N | CPU ÷ floor | burst: deliveries/s | burst: CPU s per million | missing, dup |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    jq -s -r "$common"'
        (map(select(.writes_per_syscall == 1)) | map({key: (.connections | tostring), value: .cpu_us_per_write}) | from_entries) as $floor |
        map(select(.scenario != null)) | group_by(.n)[] | . as $g |
        (map(select(.scenario == "sweep-paced"))[0]) as $p | (map(select(.scenario == "sweep-burst"))[0]) as $b |
        ($floor[$g[0].n | tostring]) as $f |
        "| \($g[0].n) | \($p.rss_before_bytes / 1048576 | r(2)) | \($p.rss_idle_bytes / 1048576 | r(1)) | \([$p.bytes_per_subscriber, $b.bytes_per_subscriber] | cell(0))" +
        " | \($p.server_cpu_s_per_million | r(3)) / \($p.server_user_s_per_million | r(3)) | \($p.latency_p99_us / 1000 | r(2))" +
        " | \($f | r(3)) | \(if $f then $p.server_cpu_s_per_million / $f | r(2) else "–" end)" +
        " | \($b.deliveries_per_s | r(0)) | \($b.server_cpu_s_per_million | r(3))" +
        " | \($g | map(.missing) | add), \($g | map(.duplicates) | add) |"' \
        "$OUT/sweep.jsonl"
    echo
fi

if [ -e "$OUT/ssed.stripped" ]; then
    echo "Stripped ssed binary: $(stat -c %s "$OUT/ssed.stripped") bytes"
fi
