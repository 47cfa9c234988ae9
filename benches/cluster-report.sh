#!/usr/bin/env bash
# The tables of a benches/cluster.sh run, from its JSON lines: benches/cluster-report.sh [OUT]
# (target/cluster by default). Medians over the runs with [min–max]; the sizes come from meta.txt.
set -euo pipefail
OUT=${1:-target/cluster}
settings=$(sed -n 's/^RLIMIT_NOFILE hard [0-9]*; //p' "$OUT/meta.txt")
for kv in $settings; do
    case ${kv%%=*} in
        BODY | LAT_N | LAT_EVENTS | LAT_RATE | TPUT_N | TPUT_EVENTS | HOLD_NODES | HOLD_N | HOLD_EVENTS | HOLD_RATE)
            declare "${kv%%=*}=${kv#*=}" ;;
    esac
done
cat "$OUT/meta.txt"
echo
# The summary: per scenario, mode and pace, medians over the runs with [min-max].
jq -rs --arg lat_n "$LAT_N" --arg lat_events "$LAT_EVENTS" --arg lat_rate "$LAT_RATE" --arg body "$BODY" \
    --arg tput_n "$TPUT_N" --arg tput_events "$TPUT_EVENTS" --arg hold_nodes "$HOLD_NODES" --arg hold_n "$HOLD_N" \
    --arg hold_events "$HOLD_EVENTS" --arg hold_rate "$HOLD_RATE" '
    def med: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def r(d): if . == null then "-" else (. * pow(10; d) | round) / pow(10; d) | tostring end;
    def stat(f; d): [.[] | f | select(. != null)] as $v
        | if ($v | length) == 0 then "-"
          elif ($v | length) == 1 then ($v[0] | r(d))
          else "\($v | med | r(d)) [\($v | min | r(d))–\($v | max | r(d))]" end;
    def ms: if . == null then null else . / 1000 end;
    def sum(f): [.[] | f // 0] | add;
    def faults: "\(sum(.missing)) / \(sum(.duplicates)) / \(sum(.out_of_order)) / \(sum(.ended)) of \(sum(.deliveries))";
    def statuses: [.[].status | tostring] | join(",");
    def order: {single: 0, redis: 1}[.mode] * 10 + ({burst: 0, pipeline: 1}[.pace] // 0);
    def rows($s): [.[] | select(.scenario == $s)] | group_by(order) | .[];
    (. as $all |
    "### latency: \($lat_n) subscribers, \($lat_events) events of \($body) B at \($lat_rate)/s; medians [min–max]",
    "",
    "| mode | runs | p50 ms | p90 ms | p99 ms | reach all p50 ms | subscribing node CPU µs per delivery | Redis on-CPU µs per event (net of idle) | missing / dup / out of order / ended of delivered | exit |",
    "|---|---|---|---|---|---|---|---|---|---|",
    ($all | rows("latency") | "| \(.[0].mode) | \(length) | \(stat(.latency_p50_us | ms; 2)) | \(stat(.latency_p90_us | ms; 2)) | \(stat(.latency_p99_us | ms; 2)) | \(stat(.reach_all_p50_us | ms; 2)) | \(stat(.server_cpu_s_per_million; 2)) | \(stat(.redis_sched_us_per_event; 0)) (\(stat(.redis_net_us_per_event; 0))) | \(faults) | \(statuses) |"),
    "",
    "### throughput: \($tput_events) events to \($tput_n) subscribers; publish on node A, subscribe on node B (single: one node)",
    "",
    "| mode | pace | runs | events/s | last answer s | Redis CPU µs/event (stat; on-CPU; net of idle) | Redis in commands µs/event | EVALSHA µs/call | node A / node B CPU µs/event | latency p50 / p99 ms | missing / dup / out of order / ended of delivered | exit |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ($all | rows("throughput") | "| \(.[0].mode) | \(.[0].pace) | \(length) | \(stat(.events_per_s; 0)) | \(stat(.publish_answered_s; 3)) | \(stat(.redis_cpu_us_per_event; 0)); \(stat(.redis_sched_us_per_event; 1)); \(stat(.redis_net_us_per_event; 1)) | \(stat(.redis_commands_us_per_event; 1)) | \(stat(.redis_evalsha_usec_per_call; 1)) | \(stat(.node_cpu_us_per_event[0]; 0)) / \(stat(.node_cpu_us_per_event[1]; 0)) | \(stat(.latency_p50_us | ms; 2)) / \(stat(.latency_p99_us | ms; 2)) | \(faults) | \(statuses) |"),
    "",
    "### hold: \($hold_nodes) nodes x \($hold_n) subscribers, one bench spreading its streams round-robin, \($hold_events) events at \($hold_rate)/s on node 1",
    "",
    "| nodes | runs | held (per node) | delivered of expected | missing / dup / out of order / ended | p50 / p99 ms | reach all max ms | Redis on-CPU µs per event (net of idle) | node 1: RSS B per subscriber | node 1: CPU µs per delivery | node CPU s, whole run (each) | exit |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ($all | rows("hold") | "| \(.[0].nodes) | \(length) | \(stat(.held; 0)) (\([.[].held_per_url // [] | map(tostring) | join("+")] | join(", "))) | \(sum(.deliveries)) of \(sum(.expected_deliveries)) | \(sum(.missing)) / \(sum(.duplicates)) / \(sum(.out_of_order)) / \(sum(.ended)) | \(stat(.latency_p50_us | ms; 2)) / \(stat(.latency_p99_us | ms; 2)) | \(stat(.reach_all_max_us | ms; 1)) | \(stat(.redis_sched_us_per_event; 0)) (\(stat(.redis_net_us_per_event; 0))) | \(stat(.node1_bytes_per_subscriber; 0)) | \(stat(.node1_cpu_us_per_delivery; 2)) | \([.[].node_cpu_s | map(tostring) | join("/")] | join(", ")) | \(statuses) |"))
' "$OUT/runs.jsonl"
