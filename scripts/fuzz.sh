#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (SECONDS_EACH, default 60) and prints,
# per target, the executions, the corpus size and whether it found a crash.
#
#   scripts/fuzz.sh                   # 60 s per target
#   SECONDS_EACH=600 scripts/fuzz.sh  # longer
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Crashing
# inputs are kept in fuzz/artifacts/<target>/; the corpus grows in fuzz/corpus/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_EACH=${SECONDS_EACH:-60}
TARGETS=$(cargo +nightly fuzz list)
cargo +nightly fuzz build -O
status=0
for target in $TARGETS; do
    log=$(mktemp)
    if cargo +nightly fuzz run -O "$target" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=512 >"$log" 2>&1; then
        result=ok
    else
        result=CRASH
        status=1
    fi
    runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' || echo "?")
    corpus=$(find "corpus/$target" -type f 2>/dev/null | wc -l)
    echo "fuzz: $target: $result, $runs runs in ${SECONDS_EACH}s, corpus $corpus inputs"
    if [ $result = CRASH ]; then tail -30 "$log"; fi
    rm -f "$log"
done
exit $status
