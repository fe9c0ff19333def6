#!/usr/bin/env bash
# The real-client matrix: the aws CLI, boto3 (download_file and get_object), rclone,
# s3cmd, s5cmd and a presigned URL fetched with curl each download an object of
# 20 MiB and a bit through s3-accel twice. Both reads must return the exact bytes,
# and the second (warm) read must cost the origin under 5 % of the object.
#
#   bash tests/clients/run.sh                 # from anywhere
#   bash tests/clients/run.sh --only s5cmd    # one client (repeatable)
#
# It installs the clients (tests/clients/install.sh: a pinned venv under
# ${XDG_CACHE_HOME:-~/.cache}/s3-accel-ci/clients, rclone from Debian), builds
# s3-test-origin (testkit) and s3-accel in release mode (nothing to do after the
# Rust suite), starts the origin (s3s-fs, SigV4, conditionals as AWS answers them)
# with one object per client and s3-accel in front of it (memory tier only, JSON
# logs, the origin's keys as its fill credentials), and runs matrix.py, which prints
# one line per client and "clients: N passed, M failed". Exits non-zero if any
# client fails. KEEP_WORK=1 keeps the temporary directory (logs, downloads);
# S3_ACCEL_BIN and S3_TEST_ORIGIN_BIN (both) use those binaries instead of building.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# 20 MiB and a bit: boto3 and the aws CLI read it in three 8 MiB ranged GETs with
# If-Match, s5cmd in one 50 MiB range past its end, rclone and s3cmd in one GET.
SIZE=$((20 * 1024 * 1024 + 4321))
BUCKET=matrix
ACCESS_KEY=AKIATESTORIGIN
SECRET_KEY=origin-secret-key-for-tests

note() { printf 'clients: %s\n' "$*"; }
die() {
    printf 'clients: %s\n' "$*" >&2
    exit 1
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/s3-accel-clients.XXXXXX")
ORIGIN_PID=
PROXY_PID=
cleanup() {
    local pid
    for pid in $PROXY_PID $ORIGIN_PID; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $PROXY_PID $ORIGIN_PID; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "${KEEP_WORK:-}" = 1 ]; then
        note "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools

VENV=$(bash "$HERE/install.sh" | tail -n 1)
PY=$VENV/bin/python
command -v curl >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl; } >/dev/null 2>&1 ||
        die "curl is missing and could not be installed"
}
note "$("$VENV/bin/aws" --version 2>&1), boto3 $("$PY" -c 'import boto3; print(boto3.__version__)')," \
    "$("$VENV/bin/s3cmd" --version), s5cmd $("$VENV/bin/s5cmd" version), $(rclone version | head -n 1), $(curl --version | head -n 1 | cut -d' ' -f1-2)"

cd "$ROOT"
if [ -n "${S3_ACCEL_BIN:-}" ] && [ -n "${S3_TEST_ORIGIN_BIN:-}" ]; then
    PROXY_BIN=$S3_ACCEL_BIN
    ORIGIN_BIN=$S3_TEST_ORIGIN_BIN
else
    # One invocation with --tests: the same feature resolution as the suite's
    # `cargo test --release --workspace` (dev-dependencies' features included), so
    # after the suite only the two binaries are linked, and nothing is rebuilt.
    note "cargo build --release --locked --workspace --tests --bin s3-accel --bin s3-test-origin"
    cargo build --release --locked --quiet --workspace --tests --bin s3-accel --bin s3-test-origin
    PROXY_BIN=$TARGET/release/s3-accel
    ORIGIN_BIN=$TARGET/release/s3-test-origin
fi

# ---------------------------------------------------------------- origin

mapfile -t CLIENTS < <("$PY" "$HERE/matrix.py" --list)
mkdir -p "$WORK/sources"
origin_args=(--data-dir "$WORK" --ready-file "$WORK/origin.ready")
for client in "${CLIENTS[@]}"; do
    head -c "$SIZE" /dev/urandom >"$WORK/sources/$client.bin"
    origin_args+=(--object "$BUCKET/matrix/$client.bin=$WORK/sources/$client.bin")
done

"$ORIGIN_BIN" "${origin_args[@]}" >"$WORK/origin.out" 2>"$WORK/origin.err" &
ORIGIN_PID=$!
for _ in $(seq 600); do
    [ -s "$WORK/origin.ready" ] && break
    kill -0 "$ORIGIN_PID" 2>/dev/null || { cat "$WORK/origin.err" >&2; die "s3-test-origin exited"; }
    sleep 0.1
done
[ -s "$WORK/origin.ready" ] || die "s3-test-origin was not ready within 60 s"
read -r origin_field stats_field <"$WORK/origin.ready"
ORIGIN_URL=${origin_field#origin=}
STATS_URL=${stats_field#stats=}

# ---------------------------------------------------------------- s3-accel

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
LISTEN_PORT=$(free_port)
ADMIN_PORT=$(free_port)
[ "$LISTEN_PORT" != "$ADMIN_PORT" ] || ADMIN_PORT=$(free_port)
PROXY_URL=http://127.0.0.1:$LISTEN_PORT

# The proxy's own fill credentials are the origin's read keys: boto3 and the aws CLI
# sign Range, so their fills need them. Nothing else from this environment.
env -u S3_ACCEL_CONFIG -u AWS_SESSION_TOKEN -u AWS_PROFILE \
    AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY AWS_REGION=default RUST_LOG=info \
    "$PROXY_BIN" --origin "$ORIGIN_URL" \
    --listen "127.0.0.1:$LISTEN_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --cache-dir "$WORK/cache" --memory-cache 1GiB --disk-cache 0 --log-format json \
    2>"$WORK/s3-accel.log" >/dev/null &
PROXY_PID=$!
for _ in $(seq 300); do
    curl -fsS --noproxy '*' -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null && break
    kill -0 "$PROXY_PID" 2>/dev/null || { tail -n 20 "$WORK/s3-accel.log" >&2; die "s3-accel exited"; }
    sleep 0.1
done
curl -fsS --noproxy '*' -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" ||
    { tail -n 20 "$WORK/s3-accel.log" >&2; die "s3-accel was not ready within 30 s"; }
note "origin $ORIGIN_URL (stats $STATS_URL), s3-accel $PROXY_URL, objects of $SIZE bytes"

# ---------------------------------------------------------------- the matrix

rc=0
"$PY" "$HERE/matrix.py" --proxy "$PROXY_URL" --stats "$STATS_URL" --access-log "$WORK/s3-accel.log" \
    --sources "$WORK/sources" --work "$WORK" "$@" || rc=$?
exit "$rc"
