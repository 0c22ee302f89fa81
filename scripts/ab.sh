#!/usr/bin/env bash
# Compares this tree's echo server with the echo server of another commit, in
# the same run: a change to the data path is measured before and after.
#
#   scripts/ab.sh REV                          # e.g. scripts/ab.sh HEAD~1
#   ROUNDS=2 DURATION=4 scripts/ab.sh REV      # quick look
#
# Both builds are release builds of examples/echo_server with the same
# zinx.json. As in bench.sh, the server is pinned to one CPU and the load
# generator to the other, the two builds take turns going first in each
# scenario, and the report gives the ratios of this tree ("after") to REV
# ("before"), best round and per-round median. The c10k scenario runs both
# builds at once, each under its own load generator. Traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

REV=${1:?usage: scripts/ab.sh REV}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-4}
OUT=target/ab
RESULTS=$OUT/results.jsonl
AFTER_PORT=9110
BEFORE_PORT=9111

if [ "$(nproc)" -ge 2 ]; then SERVER_CPU=0; LOAD_CPU=1; else SERVER_CPU=0; LOAD_CPU=0; fi

mkdir -p "$OUT"
rm -rf "$OUT/before-src"
mkdir -p "$OUT/before-src"
git archive "$REV" | tar -x -C "$OUT/before-src"
echo "ab: building $REV ($(git rev-parse --short "$REV")) and this tree" >&2
(cd "$OUT/before-src" && CARGO_TARGET_DIR="$PWD/../before-target" \
    cargo build --release -q -p zinx --example echo_server)
cargo build --release -q -p zinx-bench -p zinx --example echo_server --bins
BEFORE_BIN=$OUT/before-target/release/examples/echo_server
AFTER_BIN=target/release/examples/echo_server
: > "$RESULTS"
for side in after before; do
    port=$AFTER_PORT
    [ $side = before ] && port=$BEFORE_PORT
    cat > "$OUT/$side.json" <<EOF
{"Name": "ab-$side", "Host": "127.0.0.1", "TCPPort": $port, "MaxConn": 60000, "LogIsolationLevel": 2}
EOF
done

# Starts one build; sets SERVER_PID and PORT.
start_server() {
    local side=$1 bin=$AFTER_BIN
    PORT=$AFTER_PORT
    if [ "$side" = before ]; then bin=$BEFORE_BIN; PORT=$BEFORE_PORT; fi
    ZINX_CONFIG_FILE_PATH=$OUT/$side.json taskset -c $SERVER_CPU "$bin" > "$OUT/server-$side.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        grep -q listening "$OUT/server-$side.log" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "ab: $side did not start" >&2
    exit 1
}

stop() {
    kill -INT "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

scenario() {
    local name=$1; shift
    for round in $(seq 1 "$ROUNDS"); do
        local order="before after"
        if [ $((round % 2)) -eq 0 ]; then order="after before"; fi
        for side in $order; do
            start_server $side
            echo "ab: $name, $side, round $round" >&2
            taskset -c $LOAD_CPU target/release/zinx-bench --addr 127.0.0.1:$PORT \
                --server-pid "$SERVER_PID" --json --scenario "$name" --server-name $side \
                --duration "$DURATION" --warmup "$WARMUP" "$@" >> "$RESULTS" \
                || echo "ab: $name/$side reported errors" >&2
            stop "$SERVER_PID"
        done
    done
}

together() {
    local name=$1; shift
    for round in $(seq 1 "$ROUNDS"); do
        echo "ab: $name, round $round" >&2
        start_server before
        local before_pid=$SERVER_PID
        start_server after
        local after_pid=$SERVER_PID
        local common=(--scenario "$name" --duration "$DURATION" --warmup "$WARMUP" --json "$@")
        taskset -c $LOAD_CPU target/release/zinx-bench --addr 127.0.0.1:$BEFORE_PORT \
            --server-pid "$before_pid" --server-name before "${common[@]}" > "$OUT/together-before.json" &
        local load_before=$!
        taskset -c $LOAD_CPU target/release/zinx-bench --addr 127.0.0.1:$AFTER_PORT \
            --server-pid "$after_pid" --server-name after "${common[@]}" > "$OUT/together-after.json" &
        local load_after=$!
        wait "$load_before" || echo "ab: $name/before reported errors" >&2
        wait "$load_after" || echo "ab: $name/after reported errors" >&2
        cat "$OUT/together-before.json" "$OUT/together-after.json" >> "$RESULTS"
        stop "$before_pid"
        stop "$after_pid"
    done
}

scenario "50 conns x pipeline 16 x 64 B" --conns 50 --pipeline 16 --payload 64
scenario "50 conns x pipeline 16 x 64 B, async route" --conns 50 --pipeline 16 --payload 64 --msg-id 2
scenario "50 conns ping-pong x 64 B" --conns 50 --pipeline 1 --payload 64
scenario "50 conns ping-pong x 4 KiB" --conns 50 --pipeline 1 --payload 4096
together "c10k, both builds at once" --conns 10000 --pipeline 1 --payload 64

echo "ab: after = this tree, before = $REV ($(git rev-parse --short "$REV"))"
target/release/zinx-bench report "$RESULTS" --server after --baseline before
