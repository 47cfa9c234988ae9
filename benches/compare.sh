#!/usr/bin/env bash
# ssed against two other SSE broadcast servers on this machine: a thin caller of `ssed-bench sweep`,
# which starts each server for every run (pinned to SERVER_CPU, the bench to BENCH_CPU), interleaves
# the servers per repetition, measures the bare-write floor at every connection count, and writes the
# JSON lines, a Markdown table of medians and an HTML report with SVG charts. (The JSON lines go to
# files, the progress and the tables to the terminal.)
#   ssed          target/release/ssed --heartbeat 0
#   nchan         nginx + nchan, one worker (benches/peers/nchan.conf.in)
#   axum          benches/peers/axum (tokio current-thread runtime + axum's Sse), binary axum_sse
# Scenarios (RUNS repetitions each, at every count of CONNECTIONS):
#   paced    EVENTS events of BODY bytes at RATE/s                    (the issue's 200 x 100 B at 5/s)
#   burst    EVENTS events back to back (each POST once the previous is answered)
#   rate50   EVENTS50 events at FAST_RATE/s, at the largest count only (10k x 50/s offered)
# Then, unless FLOOR=0, the floor with 8 events per writev at the largest count, and with KERNEL=1
# the kernel's memory per idle connection (benches/kernel-memory.sh).
# Output in OUT (target/compare): density.html (the report), density.md, density.jsonl (one line per
# run), density.servers.log; rate50.*; the charts as SVG files in SVG_DIR (OUT/svg; docs/density for
# docs/benchmarks.md); and, for benches/compare-report.sh, runs.jsonl and floor.jsonl (the same lines
# at the largest count, with the field names it reads) and summary.md. Needs nginx, libnginx-mod-nchan
# and jq (Debian packages) when nchan is measured.
#
#   benches/compare.sh                                    # 1000 5000 10000, 3 repetitions: ~35 min
#   EVENTS=100 RUNS=2 SCENARIOS="paced burst" SVG_DIR=docs/density benches/compare.sh  # docs' charts
#   CONNECTIONS=2000 RUNS=1 EVENTS=50 SCENARIOS="paced burst" benches/compare.sh   # a quick pass
#   PEERS="ssed axum" SCENARIOS=burst benches/compare.sh
#   SSED_BIN=/elsewhere/target/release/ssed PEERS=ssed benches/compare.sh   # another build of ssed
#
# CPU figures (per delivery, per write) are robust on a busy machine; wall-clock ones (latency,
# deliveries per second, walk time) are upper bounds. Ctrl-C stops the servers and writes the report
# with what was measured.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CONNECTIONS:-${N:-1000 5000 10000}}
RUNS=${RUNS:-3}
PEERS=${PEERS:-ssed nchan axum}
SCENARIOS=${SCENARIOS:-paced burst rate50}
EVENTS=${EVENTS:-200}
EVENTS50=${EVENTS50:-200}
RATE=${RATE:-5}
FAST_RATE=${FAST_RATE:-50}
BODY=${BODY:-100}
FLOOR=${FLOOR:-1}
KERNEL=${KERNEL:-0}
BENCH_CPU=${BENCH_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
OUT=${OUT:-target/compare}
SVG_DIR=${SVG_DIR:-$OUT/svg}
CONNECTIONS=$(tr ' ' ',' <<<"$CONNECTIONS")
LARGEST=$(tr ',' '\n' <<<"$CONNECTIONS" | sort -n | tail -n 1)

command -v jq >/dev/null || { echo "compare.sh: jq is needed (apt-get install jq)" >&2; exit 2; }
if [[ " $PEERS " == *" nchan "* ]]; then
    command -v nginx >/dev/null || { echo "compare.sh: nginx is needed (apt-get install nginx libnginx-mod-nchan)" >&2; exit 2; }
    [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] ||
        { echo "compare.sh: nchan is missing (apt-get install libnginx-mod-nchan)" >&2; exit 2; }
fi

# Separate builds: the bench's and the peer's dependencies never unify features into the ssed measured.
cargo build --release -p ssed-server
cargo build --release -p ssed-bench
if [[ " $PEERS " == *" axum "* ]]; then cargo build --release -p ssed-axum-peer; fi
# Run copies, so a rebuild by someone else during a long run cannot swap the binaries under it.
mkdir -p "$OUT/bin"
BIN=$(cd "$OUT/bin" && pwd)
cp "${SSED_BIN:-target/release/ssed}" "$BIN/ssed"
cp target/release/ssed-bench "$BIN/"
if [[ " $PEERS " == *" axum "* ]]; then cp target/release/axum_sse "$BIN/"; fi
{
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (with local changes)')${SSED_BIN:+; ssed measured: $SSED_BIN}"
    echo "cpu $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; kernel $(uname -r)"
    if [[ " $PEERS " == *" nchan "* ]]; then
        echo "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), nchan $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo '?')"
    fi
    echo "RLIMIT_NOFILE hard $(ulimit -Hn); CONNECTIONS=$CONNECTIONS RUNS=$RUNS EVENTS=$EVENTS EVENTS50=$EVENTS50 RATE=$RATE FAST_RATE=$FAST_RATE BODY=$BODY"
    echo "started $(date -u +%FT%TZ)"
} >"$OUT/meta.txt"

# The servers, as `ssed-bench sweep` starts them: {port} a free port, {dir} a fresh scratch
# directory, {nofile} the hard descriptor limit.
servers=()
for peer in $PEERS; do
    case $peer in
        ssed) servers+=(--server "ssed=$BIN/ssed --listen 127.0.0.1:{port} --heartbeat 0") ;;
        nchan)
            servers+=(--server "nchan=sed -e 's#@PREFIX@#{dir}#g' -e 's/@PORT@/{port}/g' -e 's/@NOFILE@/{nofile}/g' $PWD/benches/peers/nchan.conf.in > {dir}/nginx.conf && exec nginx -p {dir} -c {dir}/nginx.conf")
            servers+=(--publish-url "nchan=http://127.0.0.1:{port}/pub?topic=bench")
            ;;
        axum) servers+=(--server "axum=$BIN/axum_sse 127.0.0.1:{port} --runtime current") ;;
        *)
            echo "compare.sh: unknown peer $peer" >&2
            exit 2
            ;;
    esac
done
pin=(--bench-cpu "$BENCH_CPU" --server-cpu "$SERVER_CPU")
common=("${servers[@]}" "${pin[@]}" --body-size "$BODY" --reps "$RUNS")

patterns=()
for scenario in $SCENARIOS; do
    case $scenario in
        paced | burst) patterns+=("$scenario") ;;
        rate50) ;;
        *)
            echo "compare.sh: unknown scenario $scenario" >&2
            exit 2
            ;;
    esac
done
floor=()
[ "$FLOOR" = 1 ] || floor=(--no-floor)

status=0
if [ ${#patterns[@]} -gt 0 ]; then
    "$BIN/ssed-bench" sweep "${common[@]}" "${floor[@]}" --connections "$CONNECTIONS" \
        --patterns "$(IFS=,; echo "${patterns[*]}")" --events "$EVENTS" --rate "$RATE" \
        --report "$OUT/density.html" --svg-dir "$SVG_DIR" >/dev/null || status=$?
fi
if [[ " $SCENARIOS " == *" rate50 "* ]] && [ "$status" -ne 130 ]; then
    "$BIN/ssed-bench" sweep "${common[@]}" --no-floor --connections "$LARGEST" --patterns paced \
        --events "$EVENTS50" --rate "$FAST_RATE" --drain 60 --report "$OUT/rate50.html" >/dev/null || status=$?
fi

# The field names benches/compare-report.sh reads (peer, scenario, run, status), at the largest count:
# its tables are for one N.
: >"$OUT/runs.jsonl"
: >"$OUT/floor.jsonl"
for file in density rate50; do
    [ -s "$OUT/$file.jsonl" ] || continue
    jq -c --arg file "$file" --argjson n "$LARGEST" 'select(.server != "floor" and .n == $n)
        | . + {peer: .server, scenario: (if $file == "rate50" then "rate50" else .pattern end), run: .rep,
               status: (if .start_failed or .run_failed then 2 elif .timed_out then 3 else 0 end)}' \
        "$OUT/$file.jsonl" >>"$OUT/runs.jsonl"
    jq -c --argjson n "$LARGEST" 'select(.server == "floor" and .n == $n)' "$OUT/$file.jsonl" >>"$OUT/floor.jsonl"
done
if [ "$FLOOR" = 1 ] && [ "$status" -ne 130 ]; then
    for _ in $(seq "$RUNS"); do
        taskset -c "$SERVER_CPU,$BENCH_CPU" "$BIN/ssed-bench" floor --connections "$LARGEST" \
            --writes-per-syscall 8 --size "$BODY" --writer-cpu "$SERVER_CPU" --reader-cpu "$BENCH_CPU" \
            --json >>"$OUT/floor.jsonl"
    done
fi
if [ "$KERNEL" = 1 ] && [ "$status" -ne 130 ]; then
    N=$LARGEST OUT=$OUT BIN=$BIN BENCH_CPU=$BENCH_CPU SERVER_CPU=$SERVER_CPU benches/kernel-memory.sh
fi

strip -o "$OUT/ssed.stripped" "$BIN/ssed"
echo "finished $(date -u +%FT%TZ); stripped ssed $(stat -c %s "$OUT/ssed.stripped") bytes" >>"$OUT/meta.txt"
benches/compare-report.sh "$OUT" >"$OUT/summary.md"
echo "report: $OUT/density.html; tables: $OUT/density.md, $OUT/summary.md; charts: $SVG_DIR/"
exit "$status"
