# Shared by compare.sh and density.sh (sourced, not run): one server at a time on 127.0.0.1:$PORT,
# whose PID is $server_pid, stopped on exit whatever happens.

server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

# Refuses to start when something else already listens on the port: its numbers would be measured.
ensure_port_free() {
    if port_open; then
        echo "$(basename "$0"): something already listens on 127.0.0.1:$PORT (set PORT=...)" >&2
        exit 1
    fi
}

# wait_until_listening NAME LOG: waits (10 s at most) for the server just started as $server_pid.
wait_until_listening() {
    for _ in $(seq 200); do
        port_open && return 0
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "$(basename "$0"): $1 did not start; see $2" >&2
    exit 1
}

stop_server() {
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}
