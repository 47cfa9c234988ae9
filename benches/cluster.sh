#!/usr/bin/env bash
# Cluster mode (`ssed --redis`, issue 12) on this machine, from a release build, with ssed-bench:
#   latency     publish -> delivery, LAT_N subscribers, LAT_EVENTS events of BODY bytes at LAT_RATE/s:
#               "single" = one ssed (publish and subscribe on it); "redis" = subscribers on node B,
#               publishes to node A, both on one Redis. The same ssed-bench invocation otherwise.
#   throughput  TPUT_EVENTS events to TPUT_N subscribers, sequential (--burst: each POST once the
#               previous is answered) and pipelined (--pipeline: every POST written at once), single
#               node and through Redis (publish on A, subscribe on B); events/s = accepted events /
#               publish_answered_s (first request written to last answer read).
#   hold        HOLD_NODES nodes x HOLD_N subscribers, one ssed-bench spreading its streams round-robin
#               over the nodes (--url repeated), publishing HOLD_EVENTS at HOLD_RATE/s to node 1:
#               every delivery on every node is accounted for (missing, duplicates, out of order).
# Every run starts its own redis-server (a free port, a fresh temp dir, --appendonly yes, --save '')
# and its own ssed nodes (--heartbeat 0), and stops them by PID; Redis' CPU (utime + stime from
# /proc/PID/stat) is read before and after each bench run and divided by the events accepted.
# RUNS runs of each; the table shows medians and [min-max]. JSON lines land in OUT (target/cluster):
# runs.jsonl (one line per run: ssed-bench's line plus scenario, mode, pace, run, exit status, Redis
# and node CPU), commandstats/ (Redis' INFO commandstats after each run on Redis), meta.txt, and the
# tables in summary.md. Redis' CPU is also read as on-CPU time (schedstat, nanoseconds) and net of
# what it spends idle with the nodes connected (IDLE_S seconds measured before each bench run).
# Needs redis-server, redis-cli, jq and taskset.
#
#   benches/cluster.sh                                 # the full run, about 5 minutes
#   RUNS=1 LAT_EVENTS=50 TPUT_EVENTS=5000 HOLD_N=1000 benches/cluster.sh   # a quick pass
#   SCENARIOS=throughput benches/cluster.sh
#
# Placement: latency and throughput runs pin every ssed node to SERVER_CPU, ssed-bench to BENCH_CPU
# and Redis to REDIS_CPU (BENCH_CPU by default), as compare.sh pins one server and the bench. On a
# 2-core machine that still means processes share cores: node A, node B and Redis with the bench or
# with each other. The hold runs (3 nodes, Redis and the bench) are not pinned: the kernel spreads
# them over the cores. CPU figures are robust to sharing; wall-clock ones (latency, events/s) are
# upper bounds on a busy machine.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-latency throughput hold}
BODY=${BODY:-100}
LAT_N=${LAT_N:-1000}
LAT_EVENTS=${LAT_EVENTS:-200}
LAT_RATE=${LAT_RATE:-50}
TPUT_N=${TPUT_N:-10}
TPUT_EVENTS=${TPUT_EVENTS:-20000}
HOLD_NODES=${HOLD_NODES:-3}
HOLD_N=${HOLD_N:-5000}
HOLD_EVENTS=${HOLD_EVENTS:-100}
HOLD_RATE=${HOLD_RATE:-10}
BENCH_CPU=${BENCH_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
REDIS_CPU=${REDIS_CPU:-$BENCH_CPU}
IDLE_S=${IDLE_S:-2}
PORT_BASE=${PORT_BASE:-18300}
OUT=${OUT:-target/cluster}
TOPIC=bench

for tool in jq taskset redis-server redis-cli; do
    command -v "$tool" >/dev/null || { echo "cluster.sh: $tool is needed (apt-get install jq redis-server)" >&2; exit 2; }
done

cargo build --release -p ssed-server -p ssed-bench
# Run copies, so a rebuild by someone else during the run cannot swap the binaries under it.
mkdir -p "$OUT/bin" "$OUT/commandstats"
cp target/release/ssed target/release/ssed-bench "$OUT/bin/"
BIN=$OUT/bin
: >"$OUT/runs.jsonl"
: >"$OUT/servers.log"
rm -f "$OUT"/commandstats/*
TICK=$(getconf CLK_TCK)
{
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src benches 2>/dev/null || echo ' (with local changes)')"
    echo "cpu $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; kernel $(uname -r)"
    echo "$(redis-server --version)"
    echo "RLIMIT_NOFILE hard $(ulimit -Hn); RUNS=$RUNS BODY=$BODY LAT_N=$LAT_N LAT_EVENTS=$LAT_EVENTS LAT_RATE=$LAT_RATE TPUT_N=$TPUT_N TPUT_EVENTS=$TPUT_EVENTS HOLD_NODES=$HOLD_NODES HOLD_N=$HOLD_N HOLD_EVENTS=$HOLD_EVENTS HOLD_RATE=$HOLD_RATE"
    echo "pinning (latency, throughput): ssed nodes on CPU $SERVER_CPU, Redis on CPU $REDIS_CPU, ssed-bench on CPU $BENCH_CPU; hold: unpinned"
    echo "started $(date -u +%FT%TZ)"
} >"$OUT/meta.txt"

# Everything this script started, by PID; stopped on exit whatever happens.
pids=()
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ssed-cluster.XXXXXX")
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The next port from PORT_BASE up that nothing listens on, in $port. Ports are not reused within a
# run, so a closed server's port in TIME_WAIT is never in the way.
next_port=$PORT_BASE
take_port() {
    while port_open "$next_port"; do next_port=$((next_port + 1)); done
    port=$next_port
    next_port=$((next_port + 1))
}

# wait_ready PID PORT WHAT: until PORT answers (a node: until /health says 200), 15 s at most.
wait_ready() {
    local pid=$1 p=$2 what=$3 answer
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || break
        if [ "$what" = redis ]; then
            [ "$(redis-cli -p "$p" ping 2>/dev/null)" = PONG ] && return 0
        elif port_open "$p"; then
            answer=$(exec 3<>"/dev/tcp/127.0.0.1/$p" && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 && head -c 12 <&3) || true
            [ "$answer" = "HTTP/1.1 200" ] && return 0
        fi
        sleep 0.05
    done
    echo "cluster.sh: $what on port $p did not come up; see $OUT/servers.log" >&2
    exit 1
}

# start_redis CPU: a fresh redis-server; sets redis_pid, redis_port.
start_redis() {
    local cpus=$1 dir
    take_port
    redis_port=$port
    dir=$(mktemp -d "$tmp/redis.XXXXXX")
    echo "== redis on $redis_port $(date -u +%T)" >>"$OUT/servers.log"
    $cpus redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --save '' \
        >>"$OUT/servers.log" 2>&1 &
    redis_pid=$!
    pids+=("$redis_pid")
    wait_ready "$redis_pid" "$redis_port" redis
}

# start_node CPU [ssed flags...]: one ssed; appends to node_pids, node_ports.
start_node() {
    local cpus=$1
    shift
    take_port
    echo "== ssed on $port: $* $(date -u +%T)" >>"$OUT/servers.log"
    $cpus "$BIN/ssed" --listen "127.0.0.1:$port" --heartbeat 0 "$@" >>"$OUT/servers.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    node_pids+=("$pid")
    node_ports+=("$port")
    wait_ready "$pid" "$port" ssed
}

# start_servers MODE NODES PIN [ssed flags...]: "single" is one ssed alone; "redis" is a Redis and
# NODES nodes on it. PIN=1 pins as the header says.
start_servers() {
    local mode=$1 nodes=$2 pin=$3
    shift 3
    local node_cpus="" redis_cpus=""
    if [ "$pin" = 1 ]; then
        node_cpus="taskset -c $SERVER_CPU"
        redis_cpus="taskset -c $REDIS_CPU"
    fi
    node_pids=()
    node_ports=()
    redis_pid=
    if [ "$mode" = single ]; then
        start_node "$node_cpus" "$@"
        return
    fi
    start_redis "$redis_cpus"
    for _ in $(seq "$nodes"); do
        start_node "$node_cpus" --redis "redis://127.0.0.1:$redis_port/0" "$@"
    done
    measure_redis_idle
}

stop_servers() {
    local pid
    for pid in "${node_pids[@]}" $redis_pid; do kill "$pid" 2>/dev/null || true; done
    for pid in "${node_pids[@]}" $redis_pid; do wait "$pid" 2>/dev/null || true; done
    pids=()
    # The bench closes its streams last: its sockets linger in TIME_WAIT; let the kernel settle.
    sleep 1
}

# utime + stime of PID in seconds (all its threads; clock ticks, 1/CLK_TCK s).
cpu_s() {
    awk -v t="$TICK" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"
}

# On-CPU time of PID in seconds, summed over its threads from schedstat (nanoseconds: finer than
# the ticks above, which matters for Redis' small totals).
sched_s() {
    cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.6f", s / 1e9}'
}

now_s() {
    date +%s.%N
}

# Redis' on-CPU time per second with the nodes connected and nothing published (their readers'
# XREAD BLOCK every 250 ms, Redis' own timers), over IDLE_S seconds: subtracted from a run's Redis
# time to give its cost per event net of idling. Sets redis_idle.
measure_redis_idle() {
    local s0 t0
    s0=$(sched_s "$redis_pid")
    t0=$(now_s)
    sleep "$IDLE_S"
    redis_idle=$(awk -v a="$s0" -v b="$(sched_s "$redis_pid")" -v t0="$t0" -v t1="$(now_s)" \
        'BEGIN {printf "%.6f", (b - a) / (t1 - t0)}')
}

url() {
    echo "http://127.0.0.1:$1/events?topic=$TOPIC"
}

# bench SCENARIO MODE RUN PIN SERVER_PID [ssed-bench flags...]: one ssed-bench run against the
# servers just started; its JSON line, with what was measured around it, goes to runs.jsonl. Exit
# statuses 1 (an event lost, doubled or reordered), 3 (cut short by --duration) and 4 (fewer
# streams than asked) are recorded, not fatal.
bench() {
    local scenario=$1 mode=$2 run=$3 pin=$4 server_pid=$5
    shift 5
    local prefix="" status=0 line pid redis0="null" redis1="null" rsched0="null" rsched1="null" nodes0=() nodes1=()
    local t0 t1 cmd_usec="null" evalsha_usec="null" idle="null"
    [ "$pin" = 1 ] && prefix="taskset -c $BENCH_CPU"
    if [ -n "$redis_pid" ]; then
        redis0=$(cpu_s "$redis_pid")
        rsched0=$(sched_s "$redis_pid")
        idle=$redis_idle
    fi
    for pid in "${node_pids[@]}"; do nodes0+=("$(cpu_s "$pid")"); done
    t0=$(now_s)
    echo "== $scenario $mode run $run ($(date -u +%T)): nodes ${node_ports[*]}${redis_pid:+, redis $redis_port}"
    line=$($prefix "$BIN/ssed-bench" --server-pid "$server_pid" --body-size "$BODY" --json --quiet "$@" \
        2>"$OUT/last-table.txt") || status=$?
    t1=$(now_s)
    if [ -n "$redis_pid" ]; then
        redis1=$(cpu_s "$redis_pid")
        rsched1=$(sched_s "$redis_pid")
        # Time spent inside commands (Redis' own accounting, since it started) and per EVALSHA.
        redis-cli -p "$redis_port" info commandstats >"$OUT/commandstats/$scenario-$mode-$pace-run$run.txt" || true
        cmd_usec=$(awk -F'[:,=]' '/^cmdstat_/ {s += $5} END {print s + 0}' "$OUT/commandstats/$scenario-$mode-$pace-run$run.txt")
        evalsha_usec=$(awk -F'[:,=]' '/^cmdstat_evalsha:/ {print $7}' "$OUT/commandstats/$scenario-$mode-$pace-run$run.txt")
        [ -n "$evalsha_usec" ] || evalsha_usec=null
    fi
    for pid in "${node_pids[@]}"; do nodes1+=("$(cpu_s "$pid")"); done
    sed 's/^/   /' "$OUT/last-table.txt"
    if [ -z "$line" ]; then
        echo "!! $scenario $mode run $run: ssed-bench failed with status $status"
        line='{}'
    elif [ "$status" -ne 0 ]; then
        echo "!! $scenario $mode run $run: ssed-bench exit status $status (1 lost/doubled/reordered, 3 cut by --duration, 4 fewer streams)"
    fi
    jq -c --arg scenario "$scenario" --arg mode "$mode" --argjson run "$run" --argjson status "$status" \
        --arg pace "${pace:-rate}" --argjson redis0 "$redis0" --argjson redis1 "$redis1" \
        --argjson rsched0 "$rsched0" --argjson rsched1 "$rsched1" --argjson idle "$idle" \
        --argjson wall "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')" \
        --argjson cmd_usec "$cmd_usec" --argjson evalsha_usec "$evalsha_usec" \
        --argjson nodes0 "[$(IFS=,; echo "${nodes0[*]}")]" --argjson nodes1 "[$(IFS=,; echo "${nodes1[*]}")]" '
        . + {scenario: $scenario, mode: $mode, pace: $pace, run: $run, status: $status, nodes: ($nodes0 | length),
             bench_wall_s: $wall,
             redis_cpu_s: (if $redis0 == null then null else ($redis1 - $redis0) end),
             redis_sched_s: (if $rsched0 == null then null else ($rsched1 - $rsched0) end),
             redis_idle_s_per_s: $idle,
             redis_commands_usec: $cmd_usec, redis_evalsha_usec_per_call: $evalsha_usec,
             node_cpu_s: [range($nodes0 | length) as $i | ($nodes1[$i] - $nodes0[$i])]}
        | (.accepted // 0) as $a
        | .redis_cpu_us_per_event = (if .redis_cpu_s == null or $a == 0 then null
            else (.redis_cpu_s / $a * 1e6 | round) end)
        | .redis_sched_us_per_event = (if .redis_sched_s == null or $a == 0 then null
            else (.redis_sched_s / $a * 1e6 * 10 | round / 10) end)
        | .redis_net_us_per_event = (if .redis_sched_s == null or $a == 0 then null
            else ((.redis_sched_s - $idle * $wall) / $a * 1e6 * 10 | round / 10) end)
        | .redis_commands_us_per_event = (if $cmd_usec == null or $a == 0 then null
            else ($cmd_usec / $a * 10 | round / 10) end)
        | .node_cpu_us_per_event = (if $a == 0 then null else [.node_cpu_s[] / $a * 1e6 | round] end)
        # With several URLs, --server-pid (node 1) holds only held_per_url[0] of the streams.
        | (.held_per_url // null) as $per
        | .node1_bytes_per_subscriber = (if $per == null or .rss_idle_bytes == null or .rss_before_bytes == null
            or $per[0] == 0 then null else ((.rss_idle_bytes - .rss_before_bytes) / $per[0] | round) end)
        | .node1_cpu_us_per_delivery = (if $per == null or .server_cpu_s == null or $a == 0 or $per[0] == 0
            then null else (.server_cpu_s / ($a * $per[0]) * 1e6 * 100 | round / 100) end)
        | .events_per_s = (if (.publish_answered_s // 0) > 0 then (.accepted / .publish_answered_s | round) else null end)' \
        <<<"$line" >>"$OUT/runs.jsonl"
}

# The runs, interleaved by run so that a noisy stretch of the machine hits every mode alike.
for run in $(seq "$RUNS"); do
    for scenario in $SCENARIOS; do
        case $scenario in
            latency)
                pace=rate
                for mode in single redis; do
                    start_servers "$mode" 2 1
                    sub=${node_ports[$((${#node_ports[@]} - 1))]}   # node B (the only node when single)
                    bench latency "$mode" "$run" 1 "${node_pids[$((${#node_pids[@]} - 1))]}" \
                        --url "$(url "$sub")" --publish-url "$(url "${node_ports[0]}")" \
                        --connections "$LAT_N" --events "$LAT_EVENTS" --rate "$LAT_RATE" --duration 120
                    stop_servers
                done
                ;;
            throughput)
                # A burst of TPUT_EVENTS must neither leave the history (--history) nor count as a
                # slow subscriber (--max-lag) before the bench's streams have read it.
                history=$((TPUT_EVENTS * 2 > 10000 ? TPUT_EVENTS * 2 : 10000))
                for pace in burst pipeline; do
                    for mode in single redis; do
                        start_servers "$mode" 2 1 --history "$history" --max-lag 64MiB
                        sub=${node_ports[$((${#node_ports[@]} - 1))]}
                        bench throughput "$mode" "$run" 1 "${node_pids[0]}" \
                            --url "$(url "$sub")" --publish-url "$(url "${node_ports[0]}")" \
                            --connections "$TPUT_N" --events "$TPUT_EVENTS" "--$pace" \
                            --settle 0.5 --drain 30 --duration 120
                        stop_servers
                    done
                done
                ;;
            hold)
                pace=rate
                start_servers redis "$HOLD_NODES" 0
                urls=()
                for p in "${node_ports[@]}"; do urls+=(--url "$(url "$p")"); done
                bench hold redis "$run" 0 "${node_pids[0]}" "${urls[@]}" --publish-url "$(url "${node_ports[0]}")" \
                    --connections $((HOLD_NODES * HOLD_N)) --events "$HOLD_EVENTS" --rate "$HOLD_RATE" \
                    --drain 30 --duration 180
                stop_servers
                ;;
            *)
                echo "cluster.sh: unknown scenario $scenario" >&2
                exit 2
                ;;
        esac
    done
done
echo "finished $(date -u +%FT%TZ)" >>"$OUT/meta.txt"

benches/cluster-report.sh "$OUT" | tee "$OUT/summary.md"
echo "(JSON lines in $OUT/runs.jsonl; machine and settings in $OUT/meta.txt)"
