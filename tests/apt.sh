# Sourced by the installers of test tools (tests/clients/install.sh,
# tests/sts/install.sh): they define note() and LOG before sourcing it.

# apt_install PACKAGE...: only as root on a Debian-like system; updates the package
# lists when the first attempt fails (a fresh machine has none).
apt_install() {
    command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ] || {
        note "cannot install $* (needs root and apt-get)"
        return 1
    }
    note "apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$@" >"$LOG" 2>&1 && return 0
    apt-get update -qq >>"$LOG" 2>&1 &&
        apt-get install -y -qq --no-install-recommends "$@" >>"$LOG" 2>&1 ||
        { tail -n 20 "$LOG" >&2; return 1; }
}

# make_venv DIR: a Python venv at DIR (Debian's python3 has no ensurepip without
# python3-venv, installed then).
make_venv() {
    rm -rf "$1"
    if ! python3 -m venv "$1" >"$LOG" 2>&1; then
        rm -rf "$1"
        apt_install python3-venv
        python3 -m venv "$1"
    fi
}
