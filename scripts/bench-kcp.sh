#!/usr/bin/env bash
# Benchmarks KCP against TCP on the same zinx echo server and writes
# docs/PERFORMANCE-KCP.md (included by scripts/bench.sh in docs/PERFORMANCE.md).
#
#   scripts/bench-kcp.sh                     # about 2 minutes on 2 cores
#   DURATION=3 ROUNDS=1 scripts/bench-kcp.sh
#
# 1. Clean loopback: `examples/echo_server` with `Mode` `"tcp,kcp"` serves TCP and KCP at once;
#    `zinx-bench` runs the same ping-pong load over each (servers named `tcp`
#    and `kcp`, so `zinx-bench report --server kcp --baseline tcp` gives KCP's
#    ratios to TCP).
# 2. 5% loss: the same, inside a network namespace made here whose loopback
#    drops 5% of the packets it receives (iptables' `statistic` match, as
#    netem is not available everywhere), so both directions lose 5%. Needs
#    root, `ip netns` and iptables; skipped (and said so) otherwise.
# Traffic stays on loopback (the host's, or the namespace's own).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-2}
OUT=target/bench-kcp
DOC=${DOC:-docs/PERFORMANCE-KCP.md}
NS=zinx-kcp-loss
if [ "$(nproc)" -ge 2 ]; then SERVER_CPU=0; LOAD_CPU=1; else SERVER_CPU=0; LOAD_CPU=0; fi

cargo build --release -q -p zinx-bench --bins
cargo build --release -q -p zinx --features kcp --example echo_server
mkdir -p "$OUT"
cat > "$OUT/zinx.json" <<JSON
{"Name": "bench", "Host": "127.0.0.1", "Mode": "tcp,kcp", "TCPPort": 9200, "KcpPort": 9201, "MaxConn": 60000, "LogIsolationLevel": 2}
JSON

# run PREFIX RESULTS SCENARIO ARGS...: a fresh server per run, both transports
# in turns, ROUNDS times.
run() {
    local prefix=$1 results=$2 name=$3; shift 3
    for round in $(seq 1 "$ROUNDS"); do
        local order="tcp kcp"
        if [ $((round % 2)) -eq 0 ]; then order="kcp tcp"; fi
        for transport in $order; do
            local log=$OUT/server.log port=9200
            [ "$transport" = kcp ] && port=9201
            $prefix env ZINX_CONFIG_FILE_PATH=$OUT/zinx.json taskset -c $SERVER_CPU \
                target/release/examples/echo_server > "$log" 2>&1 &
            local pid=$!
            for _ in $(seq 1 100); do
                [ "$(grep -c listening "$log" 2>/dev/null)" -ge 2 ] && break
                sleep 0.05
            done
            echo "bench-kcp: $name, $transport, round $round" >&2
            $prefix taskset -c $LOAD_CPU target/release/zinx-bench --transport "$transport" \
                --addr 127.0.0.1:$port --server-pid "$pid" --json --scenario "$name" \
                --server-name "$transport" --duration "$DURATION" --warmup "$WARMUP" "$@" \
                >> "$results" || echo "bench-kcp: $name/$transport reported errors" >&2
            kill -INT "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        done
    done
}

CLEAN=$OUT/clean.jsonl
LOSSY=$OUT/loss.jsonl
: > "$CLEAN"
: > "$LOSSY"
run "" "$CLEAN" "50 conns ping-pong x 64 B" --conns 50 --pipeline 1 --payload 64
run "" "$CLEAN" "50 conns x pipeline 16 x 64 B" --conns 50 --pipeline 16 --payload 64

LOSS_NOTE=
if ip netns add "$NS" 2>/dev/null; then
    trap 'ip netns del "$NS" 2>/dev/null || true' EXIT
    ip netns exec "$NS" ip link set lo up
    if ip netns exec "$NS" iptables -A INPUT -m statistic --mode random --probability 0.05 -j DROP; then
        run "ip netns exec $NS" "$LOSSY" "50 conns ping-pong x 64 B, 5% loss" \
            --conns 50 --pipeline 1 --payload 64
    else
        LOSS_NOTE="(skipped: iptables could not add the drop rule in the namespace)"
    fi
else
    LOSS_NOTE="(skipped: no network namespace could be made; it needs root and \`ip netns\`)"
fi

CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
cat > "$DOC" <<MD
## KCP

Measured by \`scripts/bench-kcp.sh\` (DURATION=$DURATION s after a $WARMUP s warm-up,
ROUNDS=$ROUNDS, best round shown, ratios the median of paired rounds) on $(nproc) CPUs
($CPU_MODEL), Linux $(uname -r), $(rustc --version). One \`examples/echo_server\` (\`Mode\` \`"tcp,kcp"\`)
serves TCP and KCP (Go Zinx's default \`Kcp*\` settings: nodelay, 10 ms interval, fast
resend 2, no congestion window, windows 32, stream mode); \`zinx-bench --transport tcp|kcp\`
loads one of them (every write flushed, so each request leaves at once). In the tables
\`zinx\` is KCP and the "baseline" is TCP on the same server: the ratios are KCP's to TCP's.

Clean loopback:

$(target/release/zinx-bench report "$CLEAN" --server kcp --baseline tcp)

Latency under 5% loss in both directions (a network namespace whose loopback drops 5%
of the packets it receives, TCP's and UDP's alike)${LOSS_NOTE:+ $LOSS_NOTE}:

$( [ -s "$LOSSY" ] && target/release/zinx-bench report "$LOSSY" --server kcp --baseline tcp)

Why loss separates them: a lost datagram costs KCP one resend after about 30 ms
(nodelay's minimum resend time, or sooner by fast resend after 2 later acks); a lost TCP
segment costs a retransmission timeout of 200 ms or more when no later segments follow to
trigger a fast retransmit, as in ping-pong. On clean loopback a run's ping-pong p99 moves
with the shared machine's disturbances: compare the per-round medians.
MD
echo "bench-kcp: wrote $DOC" >&2
