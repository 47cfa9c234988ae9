#!/usr/bin/env bash
# A program embedding the library without its optional capabilities (`default-features = false`)
# compiles exactly these crates (this machine's target, normal and build dependencies): mio, httparse, socket2 and log, libc (which mio and socket2
# pull anyway), crc32fast for the durable history's checksums, and cfg-if under crc32fast. Whatever
# only the server binary, the load generator or the axum peer needs belongs to their packages
# (src/cli, benches/ssed-bench, benches/peers/axum), never to the root package. A capability that
# needs a crate (cluster: redis) is a feature the embedding program opts into.
set -euo pipefail
cd "$(dirname "$0")/.."

expected="cfg-if crc32fast httparse libc log mio socket2 ssed"
actual=$(cargo tree -p ssed --no-default-features -e normal,build --prefix none --format '{p}' | awk '{print $1}' | sort -u | xargs)
if [ "$actual" != "$expected" ]; then
    echo "library dependencies changed:"
    echo "  expected: $expected"
    echo "  actual:   $actual"
    echo "a dependency only the binary needs goes in src/cli/Cargo.toml; one the library needs, here"
    exit 1
fi
echo "library dependencies: $actual"
