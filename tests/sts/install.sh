#!/usr/bin/env bash
# Installs moto's server (a real STS for the credential tests), pinned and
# idempotently, into a venv at ${XDG_CACHE_HOME:-~/.cache}/s3-accel-ci/moto from
# requirements.txt beside this file. The Rust tests run it (tests/support/sts.rs);
# a second run installs nothing: the venv carries the sha256 of the requirements
# it was built from. Concurrent runs wait for each other (flock).
#
#   bash tests/sts/install.sh       # prints the moto_server path on its last line
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/s3-accel-ci
VENV=$CACHE/moto
REQUIREMENTS=$HERE/requirements.txt
STAMP=$VENV/.requirements.sha256

note() { printf 'sts: %s\n' "$*" >&2; }
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
# shellcheck source=../apt.sh
source "$HERE/../apt.sh"

mkdir -p "$CACHE"
exec 9>"$CACHE/moto.lock"
flock 9

want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c 'import moto.server' 2>/dev/null; then
    note "pip install -r $REQUIREMENTS into $VENV"
    make_venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-input --no-deps -r "$REQUIREMENTS" >"$LOG" 2>&1 ||
        { tail -n 30 "$LOG" >&2; rm -rf "$VENV"; exit 1; }
    printf '%s\n' "$want" >"$STAMP"
fi
echo "$VENV/bin/moto_server"
