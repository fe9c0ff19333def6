#!/usr/bin/env bash
# Fuzzes s3-accel's parsers with cargo-fuzz (libFuzzer): Range headers, request
# classification, SigV4/SigV2 authorization and checksum headers, and the cache's
# key and value decoders (what is read back from disk), what peers send, and
# SigV4 as verified locally.
#
#   bash fuzz/run.sh            # each target for 10 s (what .ci/run does)
#   bash fuzz/run.sh 600        # each target for 10 minutes
#   SANITIZER=address bash fuzz/run.sh 600
#
# cargo-fuzz (pinned) is installed into ~/.cache/s3-accel-ci/cargo-fuzz on first
# use. libFuzzer's flags need an unstable rustc flag: RUSTC_BOOTSTRAP=1 lets this
# machine's stable toolchain take it. Without a sanitizer by default (the code
# under test is safe Rust; a panic or an abort is what is looked for); the corpus
# grows in fuzz/corpus (not committed). Prints the executions of each target.
set -euo pipefail

SECONDS_PER_TARGET=${1:-10}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS=${XDG_CACHE_HOME:-$HOME/.cache}/s3-accel-ci/cargo-fuzz
CARGO_FUZZ_VERSION=0.13.2
TARGETS=(range classify authorization cache_decode peer_decode sigv4)

if ! "$TOOLS/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz: cargo install cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS" >&2
    cargo install --quiet --locked --version "$CARGO_FUZZ_VERSION" --root "$TOOLS" cargo-fuzz
fi
export PATH=$TOOLS/bin:$PATH RUSTC_BOOTSTRAP=1

cd "$HERE"
cargo fuzz build --release --sanitizer "${SANITIZER:-none}" >&2
for target in "${TARGETS[@]}"; do
    mkdir -p "corpus/$target"
    log=$(mktemp)
    if ! cargo fuzz run --release --sanitizer "${SANITIZER:-none}" "$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=4096 -rss_limit_mb=1024 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz: $target FAILED (the crashing input is in fuzz/artifacts/$target)" >&2
        exit 1
    fi
    runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' | tail -n 1)
    echo "fuzz: $target: ${runs:-?} executions in ${SECONDS_PER_TARGET} s, no failure"
    rm -f "$log"
done
