#!/usr/bin/env bash
# Benchmarks the zinx echo example against the raw tokio baseline and writes
# docs/PERFORMANCE.md; then TLS, WebSocket and wss, each against a raw server of
# the same transport (zinx-baseline --transport). The KCP section comes from
# scripts/bench-kcp.sh.
#
#   scripts/bench.sh                    # full run (about 10 minutes on 2 cores)
#   DURATION=3 ROUNDS=1 scripts/bench.sh   # quick look
#   ONLY=transports scripts/bench.sh    # only the transport rows: replaces their
#                                       # section of docs/PERFORMANCE.md, the rest kept
#
# Server and load generator are pinned to different CPUs; both servers run each
# scenario under identical loads, alternately (taking turns going first), ROUNDS
# times, and the report uses the best round (the least disturbed on a shared
# machine) and the median of the paired rounds. Every server is a fresh process
# per run, so memory figures are not flattered by an earlier run's allocations.
# Traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-2}
ONLY=${ONLY:-}
OUT=target/bench
RESULTS=$OUT/results.jsonl
TRANSPORT_RESULTS=$OUT/results-transports.jsonl
DOC=${DOC:-docs/PERFORMANCE.md}
ZINX_PORT=9100
BASE_PORT=9101

if [ "$(nproc)" -ge 2 ]; then SERVER_CPU=0; LOAD_CPU=1; else SERVER_CPU=0; LOAD_CPU=0; fi

# The echo server of the transport rows has the features they need (`ws` once
# zinx has it: until then the ws and wss rows measure the baseline alone), and
# is a binary of its own: the TCP rows' server is built as before, without them.
ZINX_FEATURES=tls
if grep -q '^ws = ' zinx/Cargo.toml; then ZINX_FEATURES=tls,ws; fi
mkdir -p "$OUT"
cargo build --release -q -p zinx --example echo_server --features "$ZINX_FEATURES"
cp target/release/examples/echo_server "$OUT/echo_server-transports"
cargo build --release -q -p zinx-bench -p zinx --example echo_server --bins
if [ -z "$ONLY" ]; then : > "$RESULTS"; fi
: > "$TRANSPORT_RESULTS"
cat > "$OUT/zinx.json" <<EOF
{"Name": "bench", "Host": "127.0.0.1", "TCPPort": $ZINX_PORT, "MaxConn": 60000, "LogIsolationLevel": 2}
EOF

# A throw-away certificate for 127.0.0.1, and zinx.json for each transport.
CERT=$OUT/cert/cert.pem
KEY=$OUT/cert/key.pem
target/release/zinx-bench cert --out "$OUT/cert"
COMMON="\"Name\": \"bench\", \"Host\": \"127.0.0.1\", \"MaxConn\": 60000, \"LogIsolationLevel\": 2"
TLS_KEYS="\"CertFile\": \"$CERT\", \"PrivateKeyFile\": \"$KEY\""
WS_KEYS="\"Mode\": \"websocket\", \"WsPort\": $ZINX_PORT, \"WsPath\": \"/\""
echo "{$COMMON, \"TCPPort\": $ZINX_PORT, $TLS_KEYS}" > "$OUT/zinx-tls.json"
echo "{$COMMON, $WS_KEYS}" > "$OUT/zinx-ws.json"
echo "{$COMMON, $WS_KEYS, $TLS_KEYS}" > "$OUT/zinx-wss.json"

# What the servers and the load generator speak (tcp, tls, ws or wss), and the
# arguments that takes beyond TCP's.
TRANSPORT=tcp
transport_args() {
    local role=$1
    case $TRANSPORT in
        tcp) ;;
        ws) echo "--transport ws" ;;
        *) if [ "$role" = server ]; then echo "--transport $TRANSPORT --cert $CERT --key $KEY"
           else echo "--transport $TRANSPORT --ca $CERT"; fi ;;
    esac
}

SERVER_PID=
start_server() {
    local name=$1 log=$OUT/server-$1.log
    # Emptied first: the server's redirection may come after the wait below
    # has looked, and the last run's "listening" must not count.
    : > "$log"
    local binary=target/release/examples/echo_server config=$OUT/zinx.json
    if [ "$TRANSPORT" != tcp ]; then
        binary=$OUT/echo_server-transports config=$OUT/zinx-$TRANSPORT.json
    fi
    case $name in
        zinx) ZINX_CONFIG_FILE_PATH=$config taskset -c $SERVER_CPU \
                  "$binary" > "$log" 2>&1 &
              PORT=$ZINX_PORT ;;
        # shellcheck disable=SC2046 # the transport's arguments are words
        baseline) taskset -c $SERVER_CPU target/release/zinx-baseline \
                      --addr 127.0.0.1:$BASE_PORT $(transport_args server) > "$log" 2>&1 &
              PORT=$BASE_PORT ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        grep -q listening "$log" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "bench: $name did not start" >&2
    exit 1
}

stop_server() {
    kill -INT "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

bench() {
    # shellcheck disable=SC2046 # the transport's arguments are words
    taskset -c $LOAD_CPU target/release/zinx-bench --addr 127.0.0.1:$PORT --server-pid "$SERVER_PID" --json $(transport_args client) "$@"
}

# The servers a scenario runs (zinx is left out where it cannot serve the
# transport), and the file its results go to.
SERVERS="baseline zinx"
SCENARIO_RESULTS=$RESULTS
scenario() {
    local name=$1; shift
    for round in $(seq 1 "$ROUNDS"); do
        # Alternating which server goes first: a disturbance that grows or fades
        # over a scenario then favours neither.
        local order=$SERVERS
        if [ $((round % 2)) -eq 0 ]; then order=$(echo "$SERVERS" | awk '{for (i = NF; i > 0; i--) printf "%s ", $i}'); fi
        for server in $order; do
            start_server $server
            echo "bench: $name, $server, round $round" >&2
            bench --scenario "$name" --server-name $server --duration "$DURATION" --warmup "$WARMUP" "$@" >> "$SCENARIO_RESULTS" || echo "bench: $name/$server reported errors" >&2
            stop_server
        done
    done
}

# Both servers at once, each with its own load generator: whatever disturbs this
# shared machine then disturbs both alike, so a round's ratio is much steadier
# than that of two runs one after the other. The operating point differs: the
# two servers share the server CPU and the two load generators the other one.
together() {
    local name=$1; shift
    for round in $(seq 1 "$ROUNDS"); do
        echo "bench: $name, round $round" >&2
        start_server baseline
        local base_pid=$SERVER_PID
        start_server zinx
        local zinx_pid=$SERVER_PID
        local common=(--scenario "$name" --duration "$DURATION" --warmup "$WARMUP" --json "$@")
        taskset -c $LOAD_CPU target/release/zinx-bench --addr 127.0.0.1:$BASE_PORT \
            --server-pid "$base_pid" --server-name baseline "${common[@]}" > "$OUT/together-baseline.json" &
        local load_base=$!
        taskset -c $LOAD_CPU target/release/zinx-bench --addr 127.0.0.1:$ZINX_PORT \
            --server-pid "$zinx_pid" --server-name zinx "${common[@]}" > "$OUT/together-zinx.json" &
        local load_zinx=$!
        wait "$load_base" || echo "bench: $name/baseline reported errors" >&2
        wait "$load_zinx" || echo "bench: $name/zinx reported errors" >&2
        cat "$OUT/together-baseline.json" "$OUT/together-zinx.json" >> "$RESULTS"
        for pid in "$base_pid" "$zinx_pid"; do
            kill -INT "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        done
    done
}

# TLS, WebSocket and wss, each against the baseline of the same transport; the
# section of PERFORMANCE.md with them goes to $OUT/transports.md.
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
transport_rows() {
    for TRANSPORT in tls ws wss; do
        SERVERS="baseline zinx"
        if [ "$ZINX_FEATURES" = tls ] && [ "$TRANSPORT" != tls ]; then SERVERS=baseline; fi
        SCENARIO_RESULTS=$TRANSPORT_RESULTS
        scenario "$TRANSPORT: 50 conns x pipeline 16 x 64 B" --conns 50 --pipeline 16 --payload 64
        scenario "$TRANSPORT: 50 conns ping-pong x 64 B" --conns 50 --pipeline 1 --payload 64
    done
    TRANSPORT=tcp SERVERS="baseline zinx" SCENARIO_RESULTS=$RESULTS
    local no_ws=
    if [ "$ZINX_FEATURES" = tls ]; then
        no_ws="

The ws and wss rows have no \`zinx\` figures: this build of zinx has no \`ws\` feature,
so only their baselines ran."
    fi
    cat > "$OUT/transports.md" <<EOF
## Transports

Measured by \`ONLY=transports DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS scripts/bench.sh\`
(the full run measures these rows too, after the TCP ones): the servers take turns as
above, the tables show the best round of each and the per-round ratios as their median
(range).

- Machine: $(nproc) CPUs ($CPU_MODEL), Linux $(uname -r), a shared VM; $(rustc --version).
- Server pinned to CPU $SERVER_CPU, load generator to CPU $LOAD_CPU.
- \`zinx\`: \`examples/echo_server\` built with \`--features $ZINX_FEATURES\`, message ID 1 (the
  synchronous route); TLS on \`TCPPort\` with \`CertFile\` and \`PrivateKeyFile\`, WebSocket
  with \`"Mode": "websocket"\` on \`WsPort\` at \`/\`, wss with the certificate as well.
- \`baseline\`: \`zinx-baseline --transport tls|ws|wss\`, a raw server of the same transport:
  for tls the TCP baseline's echo over tokio-rustls (the complete frames of each read
  written back and flushed at once); for ws and wss a tokio-tungstenite echo that reads
  binary messages as one byte stream and sends each complete frame back as one binary
  message, the replies to the messages already received flushed together; tungstenite
  reads at most 8 KiB at a time there, as in zinx (its default, 128 KiB, is zeroed before
  every read: under callgrind that made the baseline's ping-pong reply 26,000 instructions).
- Both use rustls with ring and a P-256 certificate for 127.0.0.1 from \`zinx-bench cert\`;
  the load generator runs \`zinx-bench --transport tls|ws|wss --ca cert.pem\` (one binary
  message per request frame; the replies' messages read as one byte stream).

The goal: server CPU per reply within 1.3 times that of the same transport's baseline.$no_ws

$(target/release/zinx-bench report "$TRANSPORT_RESULTS" --server zinx --baseline baseline)

EOF
}

if [ "$ONLY" = transports ]; then
    transport_rows
    # Replace the section (or add it before the memory section), keep the rest.
    awk -v file="$OUT/transports.md" '
        function emit(  line) { while ((getline line < file) > 0) print line; close(file); done = 1 }
        /^## Transports$/ { emit(); skip = 1; next }
        skip && /^## / { skip = 0 }
        skip { next }
        !done && /^## Memory per connection/ { emit() }
        { print }
        END { if (!done) { print ""; emit() } }' "$DOC" > "$DOC.tmp"
    mv "$DOC.tmp" "$DOC"
    echo "bench: wrote the transport rows into $DOC" >&2
    exit 0
fi

scenario "50 conns x pipeline 16 x 64 B" --conns 50 --pipeline 16 --payload 64
scenario "50 conns x pipeline 16 x 64 B, async route" --conns 50 --pipeline 16 --payload 64 --msg-id 2
scenario "50 conns ping-pong x 64 B" --conns 50 --pipeline 1 --payload 64
scenario "1000 conns ping-pong x 64 B" --conns 1000 --pipeline 1 --payload 64
scenario "50 conns ping-pong x 4 KiB" --conns 50 --pipeline 1 --payload 4096
scenario "c10k: 10000 conns ping-pong x 64 B" --conns 10000 --pipeline 1 --payload 64
together "c10k, both servers at once" --conns 10000 --pipeline 1 --payload 64
transport_rows

# Idle memory: open and hold the connections (one message each, then hold).
MAX_FDS=$(ulimit -Hn)
for conns in 10000 50000; do
    if [ "$MAX_FDS" != unlimited ] && [ "$MAX_FDS" -le "$conns" ]; then
        echo "bench: skipping $conns idle connections: the open-file limit is $MAX_FDS" >&2
        SKIPPED_IDLE="${SKIPPED_IDLE:-} $conns"
        continue
    fi
    ulimit -n "$MAX_FDS"
    for server in baseline zinx; do
        start_server $server
        bench --scenario "idle $conns" --server-name $server --conns "$conns" --connect-only --duration 1 \
            >> "$RESULTS" || echo "bench: idle $conns/$server reported errors" >&2
        stop_server
    done
done

# Syscalls per reply under pipelining (strace slows everything; only the ratio counts).
syscalls() {
    local server=$1
    start_server $server
    strace -c -f -o "$OUT/strace-$server.txt" -p "$SERVER_PID" 2>/dev/null &
    local strace_pid=$!
    sleep 0.5
    local replies
    replies=$(bench --conns 50 --pipeline 16 --payload 64 --duration 3 --warmup 0 | \
        sed -n 's/.*"replies":\([0-9]*\).*/\1/p')
    kill -INT $strace_pid 2>/dev/null || true
    wait $strace_pid 2>/dev/null || true
    stop_server
    local calls
    calls=$(awk '/total/ {print $4}' "$OUT/strace-$server.txt")
    echo "| $server | $replies | ${calls:-?} | $(awk -v c="${calls:-0}" -v r="${replies:-1}" 'BEGIN {printf "%.3f", c / r}') |"
}
SYSCALLS="| server | replies | syscalls | syscalls per reply |
|---|---:|---:|---:|
$(syscalls baseline)
$(syscalls zinx)"

IDLE_NOTE=
if [ -n "${SKIPPED_IDLE:-}" ]; then
    IDLE_NOTE=" Not run for${SKIPPED_IDLE} connections: this machine's open-file limit
(ulimit -Hn = $MAX_FDS) cannot be raised here, and the server needs one descriptor per
connection."
fi
TABLES=$(target/release/zinx-bench report "$RESULTS" --server zinx --baseline baseline)
cat > "$DOC" <<EOF
# Performance

Measured by \`scripts/bench.sh\` (DURATION=$DURATION s measured after a $WARMUP s warm-up,
ROUNDS=$ROUNDS; the tables show for each server the round with the most replies/s, i.e. the
least disturbed on this shared machine, and the ratios of each round to the baseline
round run next to it, as their median; the two servers take turns going first). Every figure below comes from that script; the
raw runs are in \`target/bench/results.jsonl\` after running it.

- Machine: $(nproc) CPUs ($CPU_MODEL), $(free -g | awk '/Mem/ {print $2}') GiB, Linux $(uname -r), a shared VM: expect noise, compare ratios from the same run.
- Toolchain: $(rustc --version).
- Server pinned to CPU $SERVER_CPU, load generator (\`zinx-bench\`) to CPU $LOAD_CPU.
- \`zinx\`: \`examples/echo_server\` with its default worker mode (\`Task\`: handlers on each connection's task),
  \`MaxConn\` raised to 60000, logging at warnings. Requests are message ID 1, which it
  answers with a synchronous route (\`route_sync\`, \`try_send\`); the "async route"
  scenario sends ID 2, answered by an \`async\` handler awaiting \`send\`.
- \`baseline\`: \`zinx-bench/src/bin/zinx-baseline.rs\`, the smallest correct tokio echo server
  for Zinx framing (validates every header, writes the complete frames of each read back in
  one write).
- Every reply is verified (ID, length, every byte, order, connection).
- Server CPU is user + system time of the server process over the measured window.

## Throughput and latency

The project's targets, as ratios to the baseline in the same run: replies/s at least
0.9; server CPU per reply at most 1.3 pipelined and 1.15 ping-pong; p99 at most 1.2;
idle memory at most 2 KiB per connection and 8 KiB after the first message.

The scenario "c10k, both servers at once" runs the two servers at the same time, each
under its own load generator (both servers on CPU $SERVER_CPU, both load generators on
CPU $LOAD_CPU): a disturbance of the machine then hits both alike, so its per-round
ratios are the steadiest figure here, at another operating point (each server has half
a CPU, so its event loop handles fewer connections per wake-up and every reply costs
more CPU).

$TABLES

$(cat "$OUT/transports.md")
## Memory per connection

Server RSS growth per connection, idle after connecting and after one echo on every
connection (\`zinx-bench --connect-only\`).$IDLE_NOTE

$(target/release/zinx-bench report --memory "$RESULTS")

## System calls under pipelining

\`strace -c -f\` on the server during 3 s of 50 connections x pipeline 16 x 64 B. The writer
takes every queued reply and writes it with one call, so replies share syscalls.

$SYSCALLS

$(cat docs/PERFORMANCE-KCP.md 2>/dev/null || echo "## KCP

(run scripts/bench-kcp.sh)")

## What each optimisation bought

$(cat docs/OPTIMISATIONS.md 2>/dev/null || echo "(docs/OPTIMISATIONS.md is missing)")
EOF
echo "bench: wrote $DOC" >&2
