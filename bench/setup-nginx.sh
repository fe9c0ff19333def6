#!/usr/bin/env bash
# Installs nginx from Debian's packages for the bench's nginx target: the
# `nginx` package, whose binary has the slice module. Does nothing when an nginx
# with the slice module is already on PATH. Exits non-zero when it cannot.
set -euo pipefail

has_slice() { command -v nginx >/dev/null 2>&1 && nginx -V 2>&1 | grep -q -- --with-http_slice_module; }

if has_slice; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get here: install nginx (with the slice module) by hand" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
# The package's own service is not wanted: the bench runs nginx itself.
install() { $sudo apt-get install -y -q --no-install-recommends nginx; }
install || { $sudo apt-get update -q && install; }
if ! has_slice; then
    echo "the installed nginx has no slice module" >&2
    exit 1
fi
