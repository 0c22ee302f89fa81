#!/usr/bin/env bash
# Runs the soaks (zinx/tests/soak.rs, ignored in the normal test run) in release
# mode and prints their figures: churn of 10,000 short connections, slow consumers
# under each SendQueueFull policy, silent and half-open peers closed by the
# heartbeat. The half-open soak makes a network namespace (root and iproute2;
# it says so and skips without them).
# Loopback only; each soak is bounded in time. Under a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo test --release -p zinx --test soak -- --ignored --nocapture --test-threads 1 2>&1 \
    | grep -E '^soak |^test |test result|panicked|assert'
