#!/usr/bin/env bash
# The Mercure hub (issue 13) against ssed's own /events, from a release build, with ssed-bench:
#   idle        N idle subscribers: /events on a server without JWT keys, and the hub (match=TOPIC)
#               holding JWTs, TOKENS distinct ones (`Authorization: Bearer`, one per group): bytes of
#               RSS per subscriber
#   fanout      EVENTS public updates at RATE/s to N subscribers, published with POST /events?topic=
#               (the same path for both): /events subscribers against exact-match hub subscribers
#               with tokens; server CPU per delivery
#   patterns    N hub subscribers over PATTERNS distinct URL patterns (each matching the topic; each
#               subscriber's token grants `subscribe` on its own pattern), EVENTS hub publications
#               (forms, a publisher token) at RATE/s, every PRIVATE_EVERY-th private: CPU per delivery
#   storm       STORM_BASE subscribers receiving LAT_EVENTS at LAT_RATE/s: publish -> delivery p50 /
#               p99, alone and while a second ssed-bench opens STORM token-bearing hub streams as fast
#               as it can (no ramp)
# Every run starts its own ssed (--heartbeat 0) pinned to SERVER_CPU, ssed-bench on BENCH_CPU, and
# stops it by PID. RUNS runs of each, interleaved; the tables show medians and [min-max]. JSON lines
# land in OUT (target/mercure): runs.jsonl, meta.txt, summary.md. Tokens are HS256, minted here with
# Python's standard library (hmac), valid for an hour.
#
#   benches/mercure.sh                               # the full run
#   RUNS=1 N=2000 STORM=2000 benches/mercure.sh      # a quick pass
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-idle fanout patterns storm}
N=${N:-10000}
TOKENS=${TOKENS:-100}
PATTERNS=${PATTERNS:-100}
EVENTS=${EVENTS:-100}
RATE=${RATE:-20}
PRIVATE_EVERY=${PRIVATE_EVERY:-10}
STORM_BASE=${STORM_BASE:-1000}
STORM=${STORM:-10000}
LAT_EVENTS=${LAT_EVENTS:-200}
LAT_RATE=${LAT_RATE:-50}
BODY=${BODY:-100}
BENCH_CPU=${BENCH_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
PORT=${PORT:-18400}
OUT=${OUT:-target/mercure}
SECRET='bench-secret-of-at-least-thirty-two-bytes!'
TOPIC='https://example.com/books/1'

for tool in jq taskset python3; do
    command -v "$tool" >/dev/null || { echo "mercure.sh: $tool is needed" >&2; exit 2; }
done

cargo build --release -p ssed-server -p ssed-bench
mkdir -p "$OUT/bin"
cp target/release/ssed target/release/ssed-bench "$OUT/bin/"
BIN=$OUT/bin
: >"$OUT/runs.jsonl"
: >"$OUT/servers.log"
{
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (with local changes)')"
    echo "cpu $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; kernel $(uname -r)"
    echo "RLIMIT_NOFILE hard $(ulimit -Hn); RUNS=$RUNS N=$N TOKENS=$TOKENS PATTERNS=$PATTERNS EVENTS=$EVENTS RATE=$RATE PRIVATE_EVERY=$PRIVATE_EVERY STORM_BASE=$STORM_BASE STORM=$STORM LAT_EVENTS=$LAT_EVENTS LAT_RATE=$LAT_RATE BODY=$BODY"
    echo "pinning: ssed on CPU $SERVER_CPU, ssed-bench on CPU $BENCH_CPU (the storm's second bench unpinned)"
    echo "started $(date -u +%FT%TZ)"
} >"$OUT/meta.txt"

. benches/common.sh

AUD="http://127.0.0.1:$PORT/.well-known/mercure"

# tokens FILE COUNT ACTION KIND PREFIX: COUNT header lines `Authorization: Bearer JWT`, token k
# granting ACTION on one matcher (KIND exact: the topic itself, with `sub` k to keep them distinct;
# KIND urlpattern: pattern k), written to FILE.
tokens() {
    python3 - "$@" "$SECRET" "$AUD" "$TOPIC" <<'EOF'
import base64, hashlib, hmac, json, sys, time
path, count, action, kind, secret, aud, topic = sys.argv[1:8]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def pattern(k):
    return f"https://example.com/books/:id{{/v{k}}}?"
with open(path, "w") as out:
    for k in range(int(count)):
        match = topic if kind == "exact" else pattern(k)
        claims = {"iss": "https://localhost", "aud": aud, "sub": f"bench-{k}", "exp": int(time.time()) + 3600,
                  "authorization_details": [{"type": "https://mercure.rocks/authorization-detail",
                      "actions": [action], "topics": [{"match": match, "match_type": kind}]}]}
        head = b64(json.dumps({"alg": "HS256", "typ": "at+jwt"}).encode())
        body = b64(json.dumps(claims).encode())
        sig = b64(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
        out.write(f"Authorization: Bearer {head}.{body}.{sig}\n")
EOF
}

urlencode() {
    python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"
}

start_ssed() {
    ensure_port_free
    echo "== start ssed $* $(date -u +%T)" >>"$OUT/servers.log"
    taskset -c "$SERVER_CPU" "$BIN/ssed" --listen "127.0.0.1:$PORT" --heartbeat 0 --history 100000 "$@" \
        >>"$OUT/servers.log" 2>&1 &
    server_pid=$!
    wait_until_listening ssed "$OUT/servers.log"
}

# record SCENARIO MODE RUN STATUS LINE [extra jq args]: one JSON line in runs.jsonl.
record() {
    local scenario=$1 mode=$2 run=$3 status=$4 line=$5
    shift 5
    if [ -z "$line" ]; then line='{}'; fi
    jq -c --arg s "$scenario" --arg m "$mode" --argjson r "$run" --argjson st "$status" "$@" \
        '. + {scenario: $s, mode: $m, run: $r, status: $st}' <<<"$line" >>"$OUT/runs.jsonl"
}

# bench MODE SCENARIO RUN [ssed-bench flags...] against the running server.
bench() {
    local mode=$1 scenario=$2 run=$3
    shift 3
    echo "== $scenario $mode run $run ($(date -u +%T))"
    local status=0 line
    line=$(taskset -c "$BENCH_CPU" "$BIN/ssed-bench" --server-pid "$server_pid" --body-size "$BODY" --json \
        --quiet --duration 300 "$@" 2>"$OUT/last-table.txt") || status=$?
    record "$scenario" "$mode" "$run" "$status" "$line"
}

HUB="http://127.0.0.1:$PORT/.well-known/mercure"
EVENTS_URL="http://127.0.0.1:$PORT/events?topic=$TOPIC"
HUB_EXACT="$HUB?match=$(urlencode "$TOPIC")"
tokens "$OUT/subscribers-exact.txt" "$TOKENS" subscribe exact
tokens "$OUT/subscribers-patterns.txt" "$PATTERNS" subscribe urlpattern
tokens "$OUT/publisher.txt" 1 publish exact
PUBLISHER=$(head -n 1 "$OUT/publisher.txt")
PATTERN_URLS=()
for k in $(seq 0 $((PATTERNS - 1))); do
    PATTERN_URLS+=(--url "$HUB?match_urlpattern=$(urlencode "https://example.com/books/:id{/v$k}?")")
done

for run in $(seq "$RUNS"); do
    for scenario in $SCENARIOS; do
        case $scenario in
            idle | fanout)
                [ "$scenario" = idle ] && paced=() || paced=(--publish-url "$EVENTS_URL" --events "$EVENTS" --rate "$RATE")
                start_ssed
                bench events "$scenario" "$run" --url "$EVENTS_URL" --connections "$N" "${paced[@]}"
                stop_server
                start_ssed --jwt-key "$SECRET"
                # The hub's publisher on /events needs its token too once a JWT key is set.
                bench hub-exact-jwt "$scenario" "$run" --url "$HUB_EXACT" --connections "$N" \
                    --header-file "$OUT/subscribers-exact.txt" ${paced[@]+"${paced[@]}"} \
                    ${paced[@]+--publish-header "$PUBLISHER"}
                stop_server
                ;;
            patterns)
                for every in 0 "$PRIVATE_EVERY"; do
                    start_ssed --jwt-key "$SECRET"
                    bench "hub-patterns-private-every-$every" patterns "$run" "${PATTERN_URLS[@]}" \
                        --connections "$N" --header-file "$OUT/subscribers-patterns.txt" \
                        --publish-url "$HUB" --publish-form "$TOPIC" --private-every "$every" \
                        --publish-header "$PUBLISHER" --events "$EVENTS" --rate "$RATE"
                    stop_server
                done
                ;;
            storm)
                for mode in alone storm; do
                    start_ssed --jwt-key "$SECRET"
                    storm_pid=
                    if [ "$mode" = storm ]; then
                        # The storm starts once the measured subscribers are up and publishing has
                        # begun: ssed-bench ramps STORM_BASE streams in well under a second.
                        (sleep 1.5; exec "$BIN/ssed-bench" --url "$HUB_EXACT" --connections "$STORM" --ramp 0 \
                            --max-pending 2000 --header-file "$OUT/subscribers-exact.txt" --settle 0 \
                            --duration 60 --json --quiet >"$OUT/storm-$run.json" 2>/dev/null) &
                        storm_pid=$!
                    fi
                    bench "$mode" storm "$run" --url "$HUB_EXACT" --connections "$STORM_BASE" \
                        --header-file "$OUT/subscribers-exact.txt" --publish-url "$EVENTS_URL" \
                        --publish-header "$PUBLISHER" --events "$LAT_EVENTS" --rate "$LAT_RATE" --settle 0.5
                    if [ -n "$storm_pid" ]; then
                        wait "$storm_pid" || true
                    fi
                    stop_server
                done
                ;;
        esac
    done
done
echo "finished $(date -u +%FT%TZ)" >>"$OUT/meta.txt"

# The tables: medians of the runs, [min-max].
summary() {
    jq -rs '
      def med: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
      def rng: if length == 0 then "" else " [\(min)–\(max)]" end;
      def cell(f): [.[] | f | select(. != null)] as $v | if ($v | length) == 0 then "-" else "\($v | med)\($v | rng)" end;
      group_by(.scenario + " " + .mode)[] |
      "| \(.[0].scenario) | \(.[0].mode) | \(length) | \(cell(.held)) | \(cell(.bytes_per_subscriber | floor)) | \(cell(.server_sched_s_per_million)) | \(cell(.deliveries)) / \(cell(.expected_deliveries)) | \(cell(.missing)) | \(cell(.latency_p50_us)) | \(cell(.latency_p99_us)) | \([.[].status] | join(",")) |"
    ' "$OUT/runs.jsonl"
}
{
    cat "$OUT/meta.txt"
    echo
    echo "| scenario | mode | runs | held | bytes per subscriber | server CPU µs per delivery (on-CPU) | delivered / expected | missing | p50 µs | p99 µs | exit |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    summary
    for f in "$OUT"/storm-*.json; do
        [ -s "$f" ] && echo "storm bench: $(jq -c '{held, ramp_s, connect_errors}' "$f")"
    done
} >"$OUT/summary.md"
cat "$OUT/summary.md"
