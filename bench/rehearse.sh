#!/usr/bin/env bash
# A rollout rehearsed on one machine, with the operators' tools: a model of 1 GiB
# (8 shards, a config and a tokenizer) on a local origin (s3-test-origin: s3s-fs on
# loopback, unshaped), one s3-accel in front of it, `s3-accel prefetch` twice (cold,
# then warm), then `s3-accel-bench remote` from 3 processes started together and
# `s3-accel-bench merge` of their results. Prints everything; writes the merged
# tables and charts to bench/results/rehearsal/.
#
#   bash bench/rehearse.sh            # from anywhere; builds what it needs
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
OUT=$ROOT/bench/results/rehearsal
cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" -p s3-accel -p s3-accel-bench \
    -p s3-accel-testkit --bin s3-accel --bin s3-accel-bench --bin s3-test-origin >&2

W=$(mktemp -d "${TMPDIR:-/tmp}/s3-accel-rehearsal.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/model" "$W/data" "$W/cache" "$W/lt" "$OUT"

objects=()
for i in 1 2 3 4 5 6 7 8; do
    file=$W/model/model-0000$i-of-00008.safetensors
    head -c $((128 * 1024 * 1024 - 4096 * i)) /dev/urandom >"$file"
    objects+=(--object "models/llama-1g/$(basename "$file")=$file")
done
head -c 2345 /dev/urandom >"$W/model/config.json"
head -c 1800000 /dev/urandom >"$W/model/tokenizer.json"
objects+=(--object "models/llama-1g/config.json=$W/model/config.json")
objects+=(--object "models/llama-1g/tokenizer.json=$W/model/tokenizer.json")

"$BIN/s3-test-origin" "${objects[@]}" --data-dir "$W/data" --ready-file "$W/ready" >"$W/origin.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 600); do [ -s "$W/ready" ] && break; sleep 0.2; done
ORIGIN=$(sed -n 's/^origin=\([^ ]*\) .*/\1/p' "$W/ready")
STATS=$(sed -n 's/.*stats=\(.*\)/\1/p' "$W/ready")
origin_bytes() { curl -s "$STATS/stats" | sed -n 's/.*"body_bytes":\([0-9]*\).*/\1/p'; }

# The test origin's keys, as a user's shell would have its own.
export AWS_ACCESS_KEY_ID=AKIATESTORIGIN AWS_SECRET_ACCESS_KEY=origin-secret-key-for-tests
export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
LISTEN=127.0.0.1:$((20000 + RANDOM % 20000))
ADMIN=127.0.0.1:$((40000 + RANDOM % 20000))
"$BIN/s3-accel" --origin "$ORIGIN" --listen "$LISTEN" --admin-listen "$ADMIN" --cache-dir "$W/cache" \
    --memory-cache 1GiB --disk-cache 4GiB >"$W/accel.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://$ADMIN/readyz" >/dev/null && break; sleep 0.1; done
ENDPOINT=http://$LISTEN

for run in cold warm; do
    before=$(origin_bytes)
    echo "== prefetch ($run)"
    "$BIN/s3-accel" prefetch s3://models/llama-1g/ --endpoint "$ENDPOINT" --origin-endpoint "$ORIGIN"
    echo "origin body bytes: $(($(origin_bytes) - before))"
done

echo "== load test: 3 processes of s3-accel-bench remote, started together"
before=$(origin_bytes)
START=$(date -u -d '+10 sec' +%FT%TZ)
LOADS=()
for i in 0 1 2; do
    "$BIN/s3-accel-bench" remote --endpoint "$ENDPOINT" --origin-endpoint "$ORIGIN" \
        --prefix s3://models/llama-1g/ --clients 2 --requests 100 --pod "local-$i" --start-at "$START" \
        --results "$W/lt/$i" >"$W/lt/$i.out" 2>"$W/lt/$i.err" &
    LOADS+=($!)
done
for pid in "${LOADS[@]}"; do wait "$pid"; done
for i in 0 1 2; do
    sed -n 's/^RESULTS //p' "$W/lt/$i.out" >"$W/lt/local-$i.json"
done
echo "origin body bytes during the load test (the pods' direct reads that check every response): $(($(origin_bytes) - before))"
"$BIN/s3-accel-bench" merge "$W"/lt/local-*.json --results "$OUT"
