#!/usr/bin/env python3
"""Offline checks of deploy/, run by deploy/check.sh (one subcommand per check).

Each subcommand prints what it found and exits 0 (pass) or 1 (fail). It needs PyYAML
and kubernetes-validate (check.sh installs both in a venv) and Python 3.11 (tomllib).

Schema validation alone misses most of what breaks a DaemonSet like this one at
run time: a config key s3-accel refuses, a probe on a port nobody listens on, a memory
limit below what the cache needs, a PDB the disruption controller cannot compute.
`consistency` checks those against the rendered manifests and the Rust source.
"""

import argparse
import ipaddress
import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

# Kinds that are CustomResources: no schema in kubernetes-validate; `servicemonitor`
# checks them instead of `schema`.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    # cert-manager's (peer-tls): checked by `consistency` (check_peer_tls).
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    # MetalLB's (anycast): checked by `consistency` (check_anycast) and `metallb`
    # against METALLB_SCHEMAS.
    ("metallb.io/v1beta1", "IPAddressPool"),
    ("metallb.io/v1beta1", "BGPAdvertisement"),
    ("metallb.io/v1beta2", "BGPPeer"),
}

# The metrics s3-accel exports (README.md, "Metrics"), and which are histograms.
METRICS = {
    "s3accel_requests_total",
    "s3accel_response_bytes_total",
    "s3accel_origin_requests_total",
    "s3accel_origin_errors_total",
    "s3accel_origin_response_seconds",
    "s3accel_origin_fill_bytes_total",
    "s3accel_fills_in_flight",
    "s3accel_chunk_lookups_total",
    "s3accel_probes_total",
    "s3accel_probe_seconds",
    "s3accel_cache_usage_bytes",
    "s3accel_cache_capacity_bytes",
    "s3accel_credential_refreshes_total",
    "s3accel_credential_forced_refreshes_total",
    "s3accel_credential_rejections_total",
    "s3accel_credential_expiry_seconds",
}
HISTOGRAMS = {"s3accel_origin_response_seconds", "s3accel_probe_seconds"}
# The foyer series the dashboard must watch: chunks dropped instead of written to disk.
FOYER_REQUIRED = {"foyer_storage_inner_op_total"}

CONFIG_PATH = "/etc/s3-accel/s3-accel.toml"  # the image's ENTRYPOINT --config


class Failures:
    def __init__(self):
        self.items = []

    def check(self, ok, message):
        if not ok:
            self.items.append(message)
        return ok

    def finish(self, what):
        for item in self.items:
            print(f"  - {item}")
        if self.items:
            print(f"{what}: {len(self.items)} problem(s)")
            return 1
        print(f"{what}: ok")
        return 0


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find(docs, kind, name=None):
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


# ---------------------------------------------------------------- schema


def cmd_schema(args):
    from kubernetes_validate import utils as kv

    fails = Failures()
    docs = load_docs(args.file)
    fails.check(docs, f"{args.file}: no objects")
    for doc in docs:
        ident = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_KINDS:
            print(f"  {ident}: custom resource, checked by `servicemonitor` or `consistency`")
            continue
        for version in args.kubernetes_version:
            try:
                kv.validate(doc, version, strict=True)
            except kv.SchemaNotFoundError as e:
                # The CLI only warns here; an unknown kind or apiVersion is a typo for us.
                fails.check(False, f"{ident}: {e.message}")
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                fails.check(False, f"{ident} (k8s {version}): {path}: {e.message}")
    return fails.finish(f"schema {args.file} (k8s {', '.join(args.kubernetes_version)}, strict)")


# ---------------------------------------------------------------- s3-accel config


def rust_config_schema(file_rs):
    """The TOML key tree that src/config/file.rs accepts (every struct denies unknown fields)."""
    text = Path(file_rs).read_text()
    structs = {}
    for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
        fields, default = {}, False
        for line in m.group(2).splitlines():
            line = line.strip()
            if line.startswith("#[serde(default)]"):
                default = True
            fm = re.match(r"pub (\w+): (.+),$", line)
            if fm:
                ty = fm.group(2)
                optional = ty.startswith("Option<") or default or ty.endswith("Section")
                fields[fm.group(1)] = (ty, optional)
                default = False
        structs[m.group(1)] = fields
    if "ConfigFile" not in structs:
        raise SystemExit(f"{file_rs}: no `pub struct ConfigFile`; has the config moved?")
    return structs


def check_toml_against(structs, struct, table, where, fails):
    fields = structs[struct]
    for key, value in table.items():
        name = f"{where}{key}"
        if not fails.check(key in fields, f"config: unknown key `{name}` (s3-accel refuses to start)"):
            continue
        ty, _ = fields[key]
        inner = re.sub(r"^Option<(.*)>$", r"\1", ty)
        if inner.endswith("Section"):
            if fails.check(isinstance(value, dict), f"config: `{name}` must be a table"):
                check_toml_against(structs, inner, value, f"{name}.", fails)
        elif m := re.match(r"Vec<(\w+Section)>$", inner):
            if fails.check(isinstance(value, list), f"config: `{name}` must be an array of tables"):
                for i, item in enumerate(value):
                    if fails.check(isinstance(item, dict), f"config: `{name}[{i}]` must be a table"):
                        check_toml_against(structs, m.group(1), item, f"{name}[{i}].", fails)
        elif inner == "Vec<String>":
            fails.check(isinstance(value, list) and all(isinstance(v, str) for v in value),
                        f"config: `{name}` must be a list of strings")
        elif inner == "String":
            fails.check(isinstance(value, str), f"config: `{name}` must be a string")
        elif inner == "bool":
            fails.check(isinstance(value, bool), f"config: `{name}` must be true or false")
        elif inner in ("usize", "u32", "u64"):
            fails.check(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                        f"config: `{name}` must be a non-negative integer")
    for key, (ty, optional) in fields.items():
        fails.check(optional or key in table, f"config: `{where}{key}` is required")


SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "ki": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mi": 1 << 20,
              "mib": 1 << 20, "g": 1 << 30, "gi": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "ti": 1 << 40,
              "tib": 1 << 40, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_size(text):
    """src/config/units.rs parse_size: K/M/G/T binary, KB/MB/GB/TB decimal."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in SIZE_UNITS:
        raise ValueError(f"`{text}` is not a size")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2).lower()])


def parse_duration(text):
    """The humantime forms s3-accel's examples use: 500ms, 30s, 2m, 1h 30m."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)\s*([a-z]+)", text)
    if not parts or re.sub(r"\d+\s*[a-z]+|\s", "", text) or any(u not in units for _, u in parts):
        raise ValueError(f"`{text}` is not a duration")
    return sum(int(n) * units[u] for n, u in parts)


def parse_quantity(text):
    """A Kubernetes memory quantity, in bytes."""
    m = re.fullmatch(r"([0-9.]+)([KMGTPE]i?|[kmgtpe])?", str(text))
    if not m:
        raise ValueError(f"`{text}` is not a quantity")
    unit = m.group(2) or ""
    mult = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50,
            "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}[unit]
    return int(float(m.group(1)) * mult)


def valid_host(host):
    """src/config.rs normalize_host: letters, digits, '-' and '.' only."""
    return bool(host) and all(c.isalnum() and c.isascii() or c in "-." for c in host)


def check_config(config, fails):
    """The parts of src/config.rs validation that a manifest can get wrong."""
    cache = config.get("cache", {})
    sizes = {}
    for key in ("memory", "disk", "chunk_size", "fill_memory", "read_ahead_memory"):
        if key in cache:
            try:
                sizes[key] = parse_size(cache[key])
            except ValueError as e:
                fails.check(False, f"config: cache.{key}: {e}")
    for section, key in (("server", "drain_timeout"), ("server", "withdraw_grace"), ("server", "header_read_timeout"),
                         ("tls", "reload_interval"), ("origin_client", "connect_timeout"),
                         ("origin_client", "first_byte_timeout"), ("origin_client", "body_idle_timeout"),
                         ("origin_client", "pool_idle_timeout")):
        if key in config.get(section, {}):
            try:
                parse_duration(config[section][key])
            except ValueError as e:
                fails.check(False, f"config: {section}.{key}: {e}")
    chunk = sizes.get("chunk_size", 8 << 20)
    fails.check(1 << 20 <= chunk <= 256 << 20, "config: cache.chunk_size must be between 1MiB and 256MiB")
    fails.check("memory" in cache, "config: set cache.memory explicitly: the pod's memory limit is sized from it")
    fails.check("disk" in cache, "config: set cache.disk explicitly: the default is half the free space of the node's disk")
    if "memory" in sizes:
        fails.check(sizes["memory"] >= 2 * chunk, "config: cache.memory must hold at least two chunks")
    if sizes.get("disk"):
        fails.check(sizes["disk"] >= 16 * chunk, "config: cache.disk must be 0 or at least 16 chunks")
    if "pinned" in cache:
        try:
            pinned = parse_size(cache["pinned"])
            fails.check(pinned == 0 or pinned >= 2 * chunk, "config: cache.pinned must be 0 or hold two chunks")
        except ValueError as e:
            fails.check(False, f"config: cache.pinned: {e}")
    if "max_lease" in config.get("pins", {}):
        try:
            parse_duration(config["pins"]["max_lease"])
        except ValueError as e:
            fails.check(False, f"config: pins.max_lease: {e}")
    fails.check(1 <= cache.get("read_ahead", 4) <= 64, "config: cache.read_ahead must be between 1 and 64")
    for key in ("listen", "admin_listen"):
        if key in config:
            fails.check(re.fullmatch(r"[0-9.]+:\d+|\[[0-9a-fA-F:]+\]:\d+", config[key]) is not None,
                        f"config: `{key}` must be an IP:port socket address")
    regions = config.get("regions", [])
    fails.check(bool(regions) != ("origin" in config),
                "config: set exactly one of `origin` and `[[regions]]`")
    seen_names, seen_hosts = set(), {}
    for i, region in enumerate(regions):
        name = region.get("name", "")
        fails.check(name.strip() and name not in seen_names, f"config: regions[{i}].name empty or repeated")
        seen_names.add(name)
        fails.check(re.match(r"https?://[^/]+/?$", region.get("origin", "")) is not None,
                    f"config: regions[{i}].origin must be an http(s) URL with no path")
        fails.check(region.get("hosts"), f"config: regions[{i}].hosts must list at least one host")
        for host in region.get("hosts", []):
            norm = host.strip().rstrip(".").lower()
            fails.check(valid_host(norm), f"config: regions[{i}].hosts: `{host}` is not a hostname")
            fails.check(norm not in seen_hosts, f"config: host `{norm}` is in two regions")
            seen_hosts[norm] = name
        fails.check(region.get("addressing", "auto") in ("auto", "path"),
                    f"config: regions[{i}].addressing must be auto or path")
    return sizes, seen_hosts


# ---------------------------------------------------------------- consistency


def mount_of(main, path):
    """The volume mount whose mountPath holds `path` (the deepest), or None."""
    mounts = [m for m in main.get("volumeMounts", [])
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    return max(mounts, key=lambda m: len(m["mountPath"]), default=None)


# The keys cert-manager writes into a Certificate's Secret.
CERT_MANAGER_KEYS = {"cert_file": "tls.crt", "key_file": "tls.key", "ca_file": "ca.crt"}


def check_peer_tls(tls, docs, main, volumes, fails):
    """[peers.tls] reads what a cert-manager Certificate writes, mounted whole, from a
    CA the render defines; a Secret shared by the DaemonSet's pods names no node."""
    certificates = {c["metadata"]["name"]: c for c in find(docs, "Certificate")}
    issuers = {i["metadata"]["name"]: i for i in find(docs, "Issuer")}
    for c in certificates.values():
        spec = c.get("spec", {})
        name = c["metadata"]["name"]
        fails.check(spec.get("secretName") and spec.get("issuerRef", {}).get("name"),
                    f"Certificate/{name} needs spec.secretName and spec.issuerRef.name")
        ref = spec.get("issuerRef", {})
        fails.check(ref.get("kind", "Issuer") == "Issuer" and ref.get("name") in issuers,
                    f"Certificate/{name}: its Issuer `{ref.get('name')}` is not in the render")
        fails.check(spec.get("isCA") or spec.get("dnsNames") or spec.get("commonName"),
                    f"Certificate/{name} names nothing")
    for i in issuers.values():
        spec = i.get("spec", {})
        name = i["metadata"]["name"]
        if not fails.check(len([k for k in ("selfSigned", "ca") if k in spec]) == 1,
                           f"Issuer/{name} must be selfSigned or ca"):
            continue
        if "ca" in spec:
            roots = [c for c in certificates.values()
                     if c["spec"].get("secretName") == spec["ca"].get("secretName") and c["spec"].get("isCA")]
            fails.check(roots, f"Issuer/{name}: no CA Certificate (isCA) writes Secret {spec['ca'].get('secretName')}")
    directories = set()
    for key, file in CERT_MANAGER_KEYS.items():
        path = tls.get(key, "")
        mount = mount_of(main, path)
        if not fails.check(mount, f"peers.tls.{key} {path} is on no volume mount"):
            continue
        fails.check("subPath" not in mount, f"peers.tls.{key}: the Secret must be mounted whole (a subPath never updates)")
        fails.check(path == f"{mount['mountPath'].rstrip('/')}/{file}",
                    f"peers.tls.{key} must be {mount['mountPath'].rstrip('/')}/{file} (cert-manager's key)")
        directories.add(mount["name"])
    if not fails.check(len(directories) == 1, "peers.tls files must come from one Secret (one Certificate)"):
        return
    secret = volumes.get(directories.pop(), {}).get("secret", {}).get("secretName")
    issued = [c for c in certificates.values() if c["spec"].get("secretName") == secret]
    if fails.check(issued, f"peers.tls: Secret {secret} is written by no Certificate in the render"):
        usages = set(issued[0]["spec"].get("usages", []))
        fails.check({"server auth", "client auth"} <= usages,
                    f"Certificate/{issued[0]['metadata']['name']}: a peer is server and client: usages need "
                    "`server auth` and `client auth`")
        fails.check(not issued[0]["spec"].get("isCA"), "peers.tls: the peers' certificate must not be the CA")
        # One Secret for every pod of the DaemonSet: it cannot name each node.
        fails.check(tls.get("identity") == "region",
                    "peers.tls.identity must be `region` with one Certificate for the DaemonSet's pods "
                    "(`node` needs a certificate per node)")


def check_credentials(credentials, pod, main, volumes, fails):
    """The pod gives the configured credentials source what it reads (README, Credentials)."""
    env = {e["name"]: e for e in main.get("env", [])}
    source = credentials.get("source", "static")
    from_secret = [var for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if var in env]
    if source == "static":
        if "secret_access_key" in credentials:
            fails.check(False, "credentials.secret_access_key in a ConfigMap: keys belong in a Secret")
            return
        for var, key in (("AWS_ACCESS_KEY_ID", "accessKey"), ("AWS_SECRET_ACCESS_KEY", "secretKey")):
            ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
            fails.check(ref.get("name") == "s3-accel-credentials" and ref.get("key") == key,
                        f"{var} must come from Secret s3-accel-credentials key {key}")
        return
    fails.check(not from_secret, f"source = {source}: {', '.join(from_secret)} from a Secret would be unused")
    if source == "file":
        directory = credentials.get("dir", "")
        mount = mount_of(main, directory)
        if fails.check(mount and mount["mountPath"].rstrip("/") == directory.rstrip("/"),
                       f"credentials.dir {directory} is not a volume mount"):
            fails.check("subPath" not in mount, "credentials.dir must be mounted whole: a subPath mount never updates")
            fails.check("secret" in volumes.get(mount["name"], {}), f"credentials.dir {directory} is not a Secret volume")
    elif source == "web_identity":
        token = credentials.get("token_file") or env.get("AWS_WEB_IDENTITY_TOKEN_FILE", {}).get("value", "")
        fails.check(credentials.get("role_arn") or "AWS_ROLE_ARN" in env, "web_identity needs role_arn (or AWS_ROLE_ARN)")
        mount = mount_of(main, token)
        if fails.check(mount, f"the token file {token} is on no volume mount"):
            sources = volumes.get(mount["name"], {}).get("projected", {}).get("sources", [])
            tokens = [s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s]
            if fails.check(tokens, f"{mount['mountPath']} is not a projected service-account token"):
                projected = tokens[0]
                fails.check(f"{mount['mountPath'].rstrip('/')}/{projected.get('path')}" == token,
                            f"the projected token's path is not {token}")
                fails.check(projected.get("audience"), "the projected token needs an audience (the STS's)")
                fails.check(600 <= projected.get("expirationSeconds", 0) <= 86400,
                            "the projected token's expirationSeconds must be set, 600 to 86400")
                fails.check(pod.get("serviceAccountName"), "web_identity needs a serviceAccountName (the token's subject)")
    elif source == "container":
        fails.check("AWS_CONTAINER_CREDENTIALS_FULL_URI" in env or "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI" in env,
                    "source = container needs AWS_CONTAINER_CREDENTIALS_FULL_URI in the environment")
        token = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", {}).get("value")
        if token:
            fails.check(mount_of(main, token), f"the authorization token file {token} is on no volume mount")
    elif source == "process":
        fails.check(credentials.get("command"), "source = process needs credentials.command")
    else:
        fails.check(False, f"credentials.source `{source}` is not one s3-accel knows")



def port_of(address):
    return int(address.rsplit(":", 1)[1])


def containers_of(pod_spec):
    return pod_spec.get("initContainers", []) + pod_spec.get("containers", [])


def cmd_consistency(args):
    fails = Failures()
    docs = load_docs(args.file)
    structs = rust_config_schema(args.config_rs)

    daemonsets = find(docs, "DaemonSet")
    if not fails.check(len(daemonsets) == 1, "expected exactly one DaemonSet"):
        return fails.finish(f"consistency {args.file}")
    ds = daemonsets[0]
    pod = ds["spec"]["template"]["spec"]
    pod_labels = ds["spec"]["template"]["metadata"].get("labels", {})
    selector = ds["spec"]["selector"]["matchLabels"]
    fails.check(all(pod_labels.get(k) == v for k, v in selector.items()),
                "DaemonSet selector does not match its pod template labels")
    main = [c for c in pod["containers"] if c["name"] == "s3-accel"]
    if not fails.check(len(main) == 1, "no container named s3-accel"):
        return fails.finish(f"consistency {args.file}")
    main = main[0]
    ports = {p["name"]: p["containerPort"] for p in main.get("ports", [])}

    # The config the pod reads: ConfigMap volume -> mount -> the image's --config path.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in main.get("volumeMounts", [])}
    config_dir, config_file = CONFIG_PATH.rsplit("/", 1)
    config = None
    vol = volumes.get(mounts.get(config_dir, ""), {})
    cm_name = vol.get("configMap", {}).get("name")
    if fails.check(cm_name, f"nothing mounted from a ConfigMap at {config_dir}"):
        cms = find(docs, "ConfigMap", cm_name)
        if fails.check(cms, f"ConfigMap {cm_name} (mounted at {config_dir}) is not in the render"):
            text = cms[0].get("data", {}).get(config_file)
            if fails.check(text, f"ConfigMap {cm_name} has no key {config_file}"):
                try:
                    config = tomllib.loads(text)
                except tomllib.TOMLDecodeError as e:
                    fails.check(False, f"{config_file}: {e}")
    if config is None:
        return fails.finish(f"consistency {args.file}")
    check_toml_against(structs, "ConfigFile", config, "", fails)
    sizes, hosts = check_config(config, fails)

    # Listeners vs declared ports, probes and the scrape annotation. A --listen flag
    # in args overrides the key.
    listen = config.get("listen", "0.0.0.0:8080")
    for arg in main.get("args", []):
        if arg.startswith("--listen="):
            listen = arg.split("=", 1)[1]
    admin = config.get("admin_listen", "0.0.0.0:9090")
    fails.check(ports.get("s3") == port_of(listen), f"container port `s3` is not the S3 listener's port ({listen})")
    fails.check(ports.get("admin") == port_of(admin), f"container port `admin` is not admin_listen's port ({admin})")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
        http = main.get(probe, {}).get("httpGet", {})
        fails.check(http.get("path") == path and http.get("port") in ("admin", ports.get("admin")),
                    f"{probe} must GET {path} on the admin port")
    notes = ds["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in notes:
        fails.check(notes["prometheus.io/port"] == str(ports.get("admin")), "prometheus.io/port is not the admin port")

    # The cache directory is the hostPath mount.
    cache_dir = config.get("cache", {}).get("dir")
    cache_vol = volumes.get(mounts.get(cache_dir, ""), {})
    fails.check("hostPath" in cache_vol, f"cache.dir {cache_dir} is not a hostPath volume mount")

    # Memory limit vs the cache's needs (README, Sizing).
    limits = main.get("resources", {}).get("limits", {})
    requests = main.get("resources", {}).get("requests", {})
    if "memory" in sizes and fails.check("memory" in limits, "s3-accel has no memory limit"):
        chunk = sizes.get("chunk_size", 8 << 20)
        fill = sizes.get("fill_memory", min(max(sizes["memory"] // 4, 4 * chunk), 1 << 30))
        ahead = sizes.get("read_ahead_memory", min(max(sizes["memory"] // 8, 2 * chunk), max(512 << 20, 2 * chunk)))
        need = sizes["memory"] + 16 * (chunk + (64 << 10)) + fill + ahead + (100 << 20)
        limit = parse_quantity(limits["memory"])
        fails.check(limit >= need, f"memory limit {limits['memory']} is below cache.memory + flush buffers + "
                                   f"fill_memory + read_ahead_memory + 100MiB = {need / (1 << 30):.2f}GiB")
        fails.check(requests.get("memory") == limits["memory"],
                    "memory request differs from the limit (a cache pod should not be evicted for memory)")

    # Shutdown: withdraw, drain, then flush, inside the grace period.
    withdraw = parse_duration(config.get("server", {}).get("withdraw_grace", "5s"))
    drain = parse_duration(config.get("server", {}).get("drain_timeout", "30s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    # After the clients' drain, answers under way to peers get 2 s (PEERS_DRAIN in
    # src/app.rs), then the memory tier is flushed.
    peers_drain = 2
    fails.check(grace >= withdraw + drain + peers_drain + 10,
                f"terminationGracePeriodSeconds {grace} leaves under 10s after the {withdraw}s withdrawal, the {drain}s "
                f"drain and the {peers_drain}s peer drain")

    strategy = ds["spec"].get("updateStrategy", {})
    fails.check(strategy.get("type") == "RollingUpdate", "updateStrategy is not RollingUpdate")
    fails.check(str(strategy.get("rollingUpdate", {}).get("maxSurge", 0)) in ("0", "0%"),
                "maxSurge must be 0: two pods on one node would open the same cache directory")

    check_credentials(config.get("credentials", {}), pod, main, volumes, fails)
    tls = config.get("peers", {}).get("tls")
    if tls is not None:
        check_peer_tls(tls, docs, main, volumes, fails)
    else:
        fails.check(not find(docs, "Certificate"), "Certificates in the render, but no [peers.tls] reads them")

    # Hardening, every container.
    pod_sc = pod.get("securityContext", {})
    for c in containers_of(pod):
        sc = c.get("securityContext", {})
        name = c["name"]
        fails.check(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation is not false")
        fails.check(sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem is not true")
        fails.check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{name}: capabilities do not drop ALL")
        fails.check(not sc.get("privileged"), f"{name}: privileged")
        image = c.get("image", "")
        fails.check(re.search(r":[^/]+$", image) and not image.endswith(":latest"),
                    f"{name}: image `{image}` has no pinned tag")
    msc = main.get("securityContext", {})
    fails.check(msc.get("runAsNonRoot") is True and msc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0,
                "s3-accel must run as a non-root user")
    fails.check(not msc.get("capabilities", {}).get("add"), "s3-accel must not add capabilities")
    fails.check(pod.get("terminationGracePeriodSeconds") is not None, "terminationGracePeriodSeconds unset")

    # Services select the pods and name ports that exist.
    services = find(docs, "Service")
    fails.check({s["metadata"]["name"] for s in services} >= {"accel-object"}, "Service accel-object is missing")
    for svc in services:
        name = svc["metadata"]["name"]
        sel = svc["spec"].get("selector", {})
        fails.check(sel and all(pod_labels.get(k) == v for k, v in sel.items()),
                    f"Service {name} does not select the s3-accel pods")
        for p in svc["spec"].get("ports", []):
            target = p.get("targetPort", p["port"])
            fails.check(target in ports or target in ports.values(),
                        f"Service {name} port {p.get('name')}: targetPort {target} is no container port")
    for svc in find(docs, "Service", "accel-object"):
        fails.check(svc["spec"].get("internalTrafficPolicy") == "Local", "accel-object must be internalTrafficPolicy: Local")
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    fails.check(len(headless) == 1, "expected one headless Service (clusterIP: None) for peers")

    # A PDB over DaemonSet pods: integer minAvailable only, else it never syncs and
    # blocks every eviction ("found no controllers for pod").
    for pdb in find(docs, "PodDisruptionBudget"):
        spec = pdb["spec"]
        sel = spec.get("selector", {}).get("matchLabels", {})
        if all(pod_labels.get(k) == v for k, v in sel.items()):
            fails.check("maxUnavailable" not in spec and isinstance(spec.get("minAvailable"), int),
                        f"PDB {pdb['metadata']['name']}: DaemonSet pods need an integer minAvailable")

    # Host networking: the node-local address must select a region, DNS must stay cluster DNS.
    if pod.get("hostNetwork"):
        fails.check(pod.get("dnsPolicy") == "ClusterFirstWithHostNet", "hostNetwork needs dnsPolicy ClusterFirstWithHostNet")
        for c in pod.get("initContainers", []):
            script = " ".join(c.get("command", []))
            for addr in re.findall(r"(\d+\.\d+\.\d+\.\d+)/32", script):
                fails.check(addr in hosts, f"node-local address {addr} is not in any region's hosts")
                fails.check(ipaddress.ip_address(addr).is_link_local, f"{addr} is not link-local")

    for ns in find(docs, "Namespace"):
        level = ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce")
        fails.check(level == "privileged", "the namespace must allow hostPath (pod-security enforce: privileged)")
    # The anycast component's Service, MetalLB objects and readiness probe.
    check_anycast(docs, ds, main, ports, config, fails)

    # MetalLB's objects live in MetalLB's namespace (check_anycast); all else here.
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace" and not is_metallb(d)}
    fails.check(namespaces == {"s3-accel"}, f"objects outside namespace s3-accel: {namespaces}")
    return fails.finish(f"consistency {args.file}")


# ---------------------------------------------------------------- ServiceMonitor

# The ServiceMonitor fields deploy/ uses, typed; unknown fields are refused so that a
# misspelt one fails here (a subset of the CRD's openAPIV3Schema).
SERVICEMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "namespaceSelector": {"type": "object"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "matchExpressions": {"type": "array"},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                            "scrapeTimeout": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": {"$ref": "#/$defs/relabel"}},
                            "metricRelabelings": {"type": "array", "items": {"$ref": "#/$defs/relabel"}},
                        },
                    },
                },
            },
        },
    },
    "$defs": {
        "relabel": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "sourceLabels": {"type": "array", "items": {"type": "string"}},
                "separator": {"type": "string"},
                "targetLabel": {"type": "string"},
                "regex": {"type": "string"},
                "modulus": {"type": "integer"},
                "replacement": {"type": "string"},
                "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                                    "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                                    "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal", "KeepEqual",
                                    "dropequal", "DropEqual"]},
            },
        }
    },
}


def cmd_servicemonitor(args):
    import jsonschema

    fails = Failures()
    monitors = load_docs(args.file)
    services = find(load_docs(args.services_from), "Service")
    fails.check(monitors, f"{args.file}: no objects")
    for sm in monitors:
        name = sm.get("metadata", {}).get("name")
        for err in jsonschema.Draft202012Validator(SERVICEMONITOR_SCHEMA).iter_errors(sm):
            fails.check(False, f"ServiceMonitor/{name}: {'.'.join(map(str, err.path))}: {err.message}")
        if fails.items:
            continue
        labels = sm["spec"]["selector"].get("matchLabels", {})
        matched = [s for s in services
                   if s["metadata"].get("namespace") == sm["metadata"]["namespace"]
                   and all(s["metadata"].get("labels", {}).get(k) == v for k, v in labels.items())]
        fails.check(len(matched) == 1, f"ServiceMonitor/{name} selects {len(matched)} Services "
                                       f"({[s['metadata']['name'] for s in matched]}); one, or pods are scraped twice")
        for svc in matched:
            names = {p.get("name") for p in svc["spec"].get("ports", [])}
            for ep in sm["spec"]["endpoints"]:
                fails.check(ep.get("port") in names, f"ServiceMonitor/{name}: port `{ep.get('port')}` is not a port "
                                                     f"of Service {svc['metadata']['name']} {sorted(names)}")
                fails.check(ep.get("path", "/metrics") == "/metrics", f"ServiceMonitor/{name}: path is not /metrics")
    return fails.finish(f"servicemonitor {args.file}")


# ---------------------------------------------------------------- MetalLB, anycast

# The MetalLB fields of the CRDs (MetalLB 0.14 and later, config/crd/bases), typed;
# unknown fields are refused so that a misspelt one fails here (the API server would
# refuse it too: the CRDs are structural).
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
SELECTORS = {"type": "array", "items": LABEL_SELECTOR}
STRINGS = {"type": "array", "items": {"type": "string"}}
# Go durations as deploy/ writes them (whole numbers; parse_duration reads them).
GO_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h))+$"}
ASN = {"type": "integer", "minimum": 0, "maximum": 4294967295}


def metallb_schema(kind, api_version, spec, required=()):
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name", "namespace"]},
            "spec": {"type": "object", "additionalProperties": False, "required": list(required), "properties": spec},
        },
    }


METALLB_SCHEMAS = {
    "IPAddressPool": metallb_schema("IPAddressPool", "metallb.io/v1beta1", {
        "addresses": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "autoAssign": {"type": "boolean"},
        "avoidBuggyIPs": {"type": "boolean"},
        "serviceAllocation": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "priority": {"type": "integer"},
                "namespaces": STRINGS,
                "namespaceSelectors": SELECTORS,
                "serviceSelectors": SELECTORS,
            },
        },
    }, required=["addresses"]),
    "BGPAdvertisement": metallb_schema("BGPAdvertisement", "metallb.io/v1beta1", {
        "aggregationLength": {"type": "integer", "minimum": 1, "maximum": 32},
        "aggregationLengthV6": {"type": "integer", "minimum": 1, "maximum": 128},
        "localPref": {"type": "integer", "minimum": 0, "maximum": 4294967295},
        "communities": STRINGS,
        "ipAddressPools": STRINGS,
        "ipAddressPoolSelectors": SELECTORS,
        "nodeSelectors": SELECTORS,
        "peers": STRINGS,
        "serviceSelectors": SELECTORS,
    }),
    # v1beta2: v1beta1 BGPPeer is deprecated.
    "BGPPeer": metallb_schema("BGPPeer", "metallb.io/v1beta2", {
        "myASN": ASN,
        "peerASN": ASN,
        "localASN": {"type": "integer", "minimum": 1, "maximum": 4294967295},
        "dynamicASN": {"enum": ["internal", "external"]},
        "peerAddress": {"type": "string"},
        "interface": {"type": "string"},
        "sourceAddress": {"type": "string"},
        "peerPort": {"type": "integer", "minimum": 1, "maximum": 16384},
        "holdTime": GO_DURATION,
        "keepaliveTime": GO_DURATION,
        "connectTime": GO_DURATION,
        "routerID": {"type": "string"},
        "nodeSelectors": SELECTORS,
        "password": {"type": "string"},
        "passwordSecret": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
        },
        "bfdProfile": {"type": "string"},
        "enableGracefulRestart": {"type": "boolean"},
        "ebgpMultiHop": {"type": "boolean"},
        "vrf": {"type": "string"},
        "disableMP": {"type": "boolean"},
        "dualStackAddressFamily": {"type": "boolean"},
    }, required=["myASN"]),
}

# The annotations a Service asks MetalLB with; metallb.universe.tf/ before 0.14.9.
METALLB_IPS = ("metallb.io/loadBalancerIPs", "metallb.universe.tf/loadBalancerIPs")
METALLB_POOL = ("metallb.io/address-pool", "metallb.universe.tf/address-pool")


def is_metallb(doc):
    return doc.get("apiVersion", "").startswith("metallb.io/")


def pool_ranges(pool):
    """An IPAddressPool's addresses as (first, last) pairs; ValueError on a bad one."""
    ranges = []
    for entry in pool.get("spec", {}).get("addresses", []):
        if "-" in entry:
            first, last = (ipaddress.ip_address(a.strip()) for a in entry.split("-", 1))
            if first.version != last.version or first > last:
                raise ValueError(f"`{entry}` is not a range")
        else:
            net = ipaddress.ip_network(entry.strip(), strict=True)
            first, last = net[0], net[-1]
        ranges.append((first, last))
    return ranges


def selects_nodes(selector, node_selector):
    """A label selector matches every node the DaemonSet's nodeSelector admits."""
    if not all(node_selector.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        value, op = node_selector.get(e["key"]), e["operator"]
        if not ((op == "In" and value in e.get("values", [])) or (op == "Exists" and value is not None)):
            return False
    return True


def check_metallb_object(doc, fails):
    """One MetalLB object: its CRD's schema (METALLB_SCHEMAS), then what the schema
    cannot say. Returns whether it passed the schema."""
    import jsonschema

    kind = doc.get("kind")
    ident = f"{kind}/{doc.get('metadata', {}).get('name')}"
    if not fails.check(kind in METALLB_SCHEMAS, f"{ident}: not a MetalLB kind deploy/ knows ({sorted(METALLB_SCHEMAS)})"):
        return False
    errors = list(jsonschema.Draft202012Validator(METALLB_SCHEMAS[kind]).iter_errors(doc))
    for err in errors:
        fails.check(False, f"{ident}: {'.'.join(map(str, err.path)) or '(top)'}: {err.message}")
    if errors:
        return False
    spec = doc["spec"]
    if kind == "IPAddressPool":
        try:
            pool_ranges(doc)
        except ValueError as e:
            return fails.check(False, f"{ident}: addresses: {e}")
    elif kind == "BGPAdvertisement":
        for c in spec.get("communities", []):
            m = re.fullmatch(r"(\d+):(\d+)|large:(\d+):(\d+):(\d+)|[A-Za-z][\w.-]*", c)
            ok = m and (all(int(x) <= 65535 for x in m.group(1, 2) if x)
                        and all(int(x) <= 4294967295 for x in m.group(3, 4, 5) if x))
            fails.check(ok, f"{ident}: community `{c}` is neither ASN:VALUE, large:A:B:C nor a Community alias")
    elif kind == "BGPPeer":
        fails.check(("peerAddress" in spec) != ("interface" in spec), f"{ident}: set exactly one of peerAddress and interface")
        if "peerAddress" in spec:
            try:
                ipaddress.ip_address(spec["peerAddress"])
            except ValueError:
                fails.check(False, f"{ident}: peerAddress `{spec['peerAddress']}` is not an IP address")
        fails.check(("peerASN" in spec) != ("dynamicASN" in spec), f"{ident}: set exactly one of peerASN and dynamicASN")
        fails.check(spec["myASN"] > 0 and spec.get("peerASN", 1) > 0, f"{ident}: AS 0 is reserved")
        # As MetalLB's parseTimers: either timer defaults from the other (x3, /3).
        hold = parse_duration(spec["holdTime"]) if "holdTime" in spec else None
        keepalive = parse_duration(spec["keepaliveTime"]) if "keepaliveTime" in spec else None
        if hold is not None or keepalive is not None:
            hold = hold if hold is not None else keepalive * 3
            keepalive = keepalive if keepalive is not None else hold / 3
            fails.check(hold == 0 or hold >= 3, f"{ident}: holdTime must be 0 or at least 3s (RFC 4271)")
            fails.check(keepalive <= hold, f"{ident}: keepaliveTime must not exceed holdTime")
    return True


def cmd_metallb(args):
    """MetalLB objects in a file (the anycast component's bgppeer.yaml example)."""
    fails = Failures()
    docs = load_docs(args.file)
    fails.check(docs, f"{args.file}: no objects")
    for doc in docs:
        check_metallb_object(doc, fails)
    return fails.finish(f"metallb {args.file} ({', '.join(d.get('kind', '?') for d in docs)})")


def check_anycast(docs, ds, main, ports, config, fails):
    """The anycast component: a LoadBalancer Service with externalTrafficPolicy Local
    in front of the DaemonSet's S3 port, asking MetalLB for an address of a pool that
    a BGPAdvertisement announces, and a readiness probe that takes a terminating
    pod's node out of the route well inside server.withdraw_grace."""
    services = [s for s in find(docs, "Service") if s["spec"].get("type") == "LoadBalancer"]
    metallb = [d for d in docs if is_metallb(d)]
    if not services and not metallb:
        return
    valid = [d for d in metallb if check_metallb_object(d, fails)]
    namespaces = {d["metadata"].get("namespace") for d in metallb}
    fails.check(len(namespaces) <= 1 and not namespaces & {None, "s3-accel"},
                f"MetalLB objects must all be in MetalLB's namespace (metallb-system), not {sorted(map(str, namespaces))}")
    pools = {p["metadata"]["name"]: p for p in valid if p["kind"] == "IPAddressPool"}
    adverts = [a for a in valid if a["kind"] == "BGPAdvertisement"]
    fails.check(services, "MetalLB objects in the render but no LoadBalancer Service uses them")

    template = ds["spec"]["template"]
    pod_labels = template["metadata"].get("labels", {})
    node_selector = template["spec"].get("nodeSelector", {})
    for svc in services:
        name = f"Service {svc['metadata']['name']}"
        spec = svc["spec"]
        notes = svc["metadata"].get("annotations", {})
        fails.check(spec.get("externalTrafficPolicy") == "Local",
                    f"{name}: externalTrafficPolicy must be Local: only nodes with a serving pod may announce the "
                    "address, and traffic must not cross to another node")
        sel = spec.get("selector", {})
        fails.check(all(sel.get(k) == v for k, v in ds["spec"]["selector"]["matchLabels"].items())
                    and all(pod_labels.get(k) == v for k, v in sel.items()),
                    f"{name}: its selector must be the DaemonSet's pods' (it holds {sel})")
        targets = [p.get("targetPort", p.get("port")) for p in spec.get("ports", [])]
        fails.check(targets and all(t in ("s3", ports.get("s3")) for t in targets),
                    f"{name}: must expose the container's S3 port (`s3`, {ports.get('s3')}) and only it, not {targets}")
        # The address it asks for, and the pool that holds it.
        asked = {notes[k] for k in METALLB_IPS if k in notes}
        if not fails.check(len(asked) == 1, f"{name}: ask for the address with one {METALLB_IPS[0]} annotation"):
            continue
        fails.check(not spec.get("loadBalancerIP"), f"{name}: MetalLB refuses both spec.loadBalancerIP and {METALLB_IPS[0]}")
        try:
            ips = [ipaddress.ip_address(a.strip()) for a in asked.pop().split(",")]
        except ValueError as e:
            fails.check(False, f"{name}: {METALLB_IPS[0]}: {e}")
            continue
        families = {f"IPv{ip.version}" for ip in ips}
        if "ipFamilies" in spec:
            fails.check(families <= set(spec["ipFamilies"]),
                        f"{name}: ipFamilies {spec['ipFamilies']} do not include the address's family {sorted(families)}")
        holding = {pname for pname, pool in pools.items()
                   if all(any(first <= ip <= last for first, last in pool_ranges(pool) if first.version == ip.version)
                          for ip in ips)}
        if not fails.check(holding, f"{name}: {', '.join(map(str, ips))} is in no IPAddressPool of the render"):
            continue
        named = {notes[k] for k in METALLB_POOL if k in notes}
        fails.check(len(named) <= 1 and named <= holding,
                    f"{name}: its address-pool annotation {sorted(named)} is not the pool holding its address {sorted(holding)}")
        for pname in sorted(holding):
            pool = pools[pname]
            fails.check(pool["spec"].get("autoAssign") is False,
                        f"IPAddressPool {pname}: autoAssign must be false (the anycast address is for {name} only)")
            fails.check(all(first == last for first, last in pool_ranges(pool)),
                        f"IPAddressPool {pname}: an anycast pool holds single addresses (/32), not ranges")
            announcing = [a for a in adverts if pname in a["spec"].get("ipAddressPools", [])]
            if not fails.check(announcing, f"IPAddressPool {pname}: no BGPAdvertisement names it in ipAddressPools: "
                                           "its address would be assigned but never announced"):
                continue
            for a in announcing:
                aname = f"BGPAdvertisement {a['metadata']['name']}"
                aspec = a["spec"]
                if any(ip.version == 4 for ip in ips):
                    fails.check(aspec.get("aggregationLength", 32) == 32,
                                f"{aname}: aggregationLength must be 32: the anycast /32 itself, not a covering prefix")
                if any(ip.version == 6 for ip in ips):
                    fails.check(aspec.get("aggregationLengthV6", 128) == 128, f"{aname}: aggregationLengthV6 must be 128")
                for s in aspec.get("nodeSelectors", []):
                    fails.check(selects_nodes(s, node_selector),
                                f"{aname}: nodeSelectors {s} leave out cache nodes (the DaemonSet's nodeSelector {node_selector})")

    # Withdrawal: MetalLB announces a terminating pod's node while the pod is
    # `serving`, which the readiness probe decides; it must see /readyz fail well
    # inside server.withdraw_grace (half of it: the other half is for the speaker and
    # the routers), or the node stays in the route after the pod stops accepting.
    if services:
        probe = main.get("readinessProbe", {})
        period, threshold = probe.get("periodSeconds", 10), probe.get("failureThreshold", 3)
        withdraw = parse_duration(config.get("server", {}).get("withdraw_grace", "5s"))
        fails.check(probe.get("httpGet", {}).get("path") == "/readyz", "readinessProbe must GET /readyz")
        fails.check(withdraw > 0 and period * threshold <= withdraw / 2,
                    f"readinessProbe: periodSeconds x failureThreshold = {period}x{threshold} = {period * threshold}s; "
                    f"behind an anycast address it must be at most half of server.withdraw_grace ({withdraw}s), or the "
                    "node still announces the address when the pod stops accepting")


# ---------------------------------------------------------------- Grafana

PROMQL_WORDS = {
    # aggregations, functions and keywords the dashboard may use
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "stdvar", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "vector", "scalar",
    "clamp_min", "clamp_max", "clamp", "abs", "ceil", "floor", "round", "label_replace", "time",
    "min_over_time", "max_over_time", "avg_over_time", "sum_over_time", "last_over_time", "absent", "changes",
    "resets", "sort", "sort_desc", "inf", "nan",
}


def promql_metrics(expr):
    """Metric names in a PromQL expression (names only: no labels, strings, ranges, variables)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)           # string literals
    e = re.sub(r"\{[^}]*\}", "", e)                          # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                         # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", e)  # grouping labels
    e = re.sub(r"\$\{?\w+\}?", "", e)                        # Grafana variables
    e = re.sub(r"(?<![A-Za-z0-9_:.])\d+(\.\d+)?([eE][+-]?\d+)?", " ", e)  # numbers
    words = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", e)
    return [w for w in words if w not in PROMQL_WORDS]


def cmd_grafana(args):
    fails = Failures()
    try:
        dash = json.loads(Path(args.file).read_text())
    except json.JSONDecodeError as e:
        fails.check(False, f"not JSON: {e}")
        return fails.finish(f"grafana {args.file}")
    fails.check(isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 36,
                "schemaVersion missing or older than 36")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    fails.check(variables.get("datasource", {}).get("type") == "datasource"
                and variables["datasource"].get("query") == "prometheus",
                "no `datasource` variable of type datasource (prometheus)")
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))
    ids = [p.get("id") for p in panels]
    fails.check(len(ids) == len(set(ids)), "panel ids are not unique")
    used = set()
    graphs = [p for p in panels if p.get("type") != "row"]
    fails.check(len(graphs) >= 10, f"only {len(graphs)} panels")
    for p in graphs:
        title = p.get("title", "?")
        grid = p.get("gridPos", {})
        fails.check(grid.get("x", 0) + grid.get("w", 0) <= 24 and grid.get("h", 0) > 0, f"{title}: bad gridPos")
        fails.check(p.get("datasource", {}).get("uid") == "${datasource}", f"{title}: datasource is not ${{datasource}}")
        targets = p.get("targets", [])
        fails.check(targets, f"{title}: no queries")
        for t in targets:
            expr = t.get("expr", "")
            fails.check(t.get("datasource", {}).get("uid", "${datasource}") == "${datasource}",
                        f"{title}: query datasource is not ${{datasource}}")
            names = promql_metrics(expr)
            fails.check(names, f"{title}: `{expr}` names no metric")
            for name in names:
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                if name.startswith("foyer_"):
                    used.add(name)
                elif fails.check(name in METRICS or base in HISTOGRAMS,
                                 f"{title}: `{name}` is not an s3-accel metric"):
                    used.add(base if base in HISTOGRAMS else name)
                    if base in HISTOGRAMS:
                        fails.check(name != base,
                                    f"{title}: histogram {base} used without _bucket/_sum/_count")
            if "histogram_quantile" in expr:
                fails.check(re.search(r"by \([^)]*\ble\b", expr) is not None,
                            f"{title}: histogram_quantile without `by (le, ...)`")
    for var in variables.values():
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.match(r"label_values\((\w+)", q or "")
        if m:
            fails.check(m.group(1) in METRICS, f"variable {var['name']}: `{m.group(1)}` is not an s3-accel metric")
    missing = (METRICS | FOYER_REQUIRED) - used
    fails.check(not missing, f"metrics no panel shows: {sorted(missing)}")
    return fails.finish(f"grafana {args.file} ({len(graphs)} panels)")


# ---------------------------------------------------------------- Dockerfile


def cmd_dockerfile(args):
    fails = Failures()
    text = Path(args.file).read_text()
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    fails.check(len(froms) >= 2, "not multi-stage (a builder and a runtime stage)")
    last = lines[lines.index(froms[-1]):] if froms else []
    users = [l.split(None, 1)[1] for l in last if l.upper().startswith("USER ")]
    fails.check(users and users[-1].split(":")[0] not in ("0", "root"), "the runtime stage has no non-root USER")
    fails.check(any(l.upper().startswith("EXPOSE ") and {"8080", "9090"} <= set(l.split()[1:]) for l in last),
                "the runtime stage does not EXPOSE 8080 9090")
    entry = [l for l in last if l.upper().startswith("ENTRYPOINT ")]
    if fails.check(entry, "no ENTRYPOINT in the runtime stage"):
        try:
            argv = json.loads(entry[-1].split(None, 1)[1])
        except json.JSONDecodeError:
            argv = []
        fails.check(argv and argv[0].endswith("/s3-accel"), "ENTRYPOINT is not the s3-accel binary (exec form)")
        fails.check(" ".join(argv[1:]).find(f"--config {CONFIG_PATH}") >= 0, f"ENTRYPOINT lacks --config {CONFIG_PATH}")
        fails.check("--log-format json" in " ".join(argv[1:]), "ENTRYPOINT lacks --log-format json")
    fails.check(re.search(r"cargo build --release --locked -p s3-accel", text), "no `cargo build --release --locked -p s3-accel`")
    for image in re.findall(r"^ARG \w+_IMAGE=(\S+)", text, re.M):
        fails.check(":" in image and not image.endswith(":latest"), f"base image `{image}` is not pinned to a tag")
    ignore = Path(args.file).with_name(Path(args.file).name + ".dockerignore")
    if fails.check(ignore.exists(), f"{ignore} is missing (the build context would include target/)"):
        entries = {l.strip().rstrip("/") for l in ignore.read_text().splitlines()}
        fails.check({"target", ".git"} <= entries, f"{ignore} must exclude target/ and .git/")
    return fails.finish(f"dockerfile {args.file}")


# ---------------------------------------------------------------- load-test Job


def struct_flags(rs, struct):
    """The long flags of clap struct `struct` in the Rust file `rs`."""
    text = Path(rs).read_text()
    body = re.search(r"pub struct " + struct + r" \{(.*?)\n\}", text, re.S)
    if not body:
        raise SystemExit(f"{rs}: no `pub struct {struct}`; has it moved?")
    flags, rename = set(), None
    for line in body.group(1).splitlines():
        line = line.strip()
        if m := re.search(r'long\s*=\s*"([\w-]+)"', line):
            rename = m.group(1)
        if m := re.match(r"pub (\w+):", line):
            flags.add(rename or m.group(1).replace("_", "-"))
            rename = None
    return flags


def cmd_pinning(args):
    """The pinning example: a native sidecar running `s3-accel pin --renew-every`
    with flags it has, renewing at most every half lease, asking a node's admin port,
    its token from a Secret it mounts."""
    fails = Failures()
    docs = load_docs(args.file)
    deployments = find(docs, "Deployment")
    if not fails.check(len(deployments) == 1, "expected one Deployment"):
        return fails.finish(f"pinning {args.file}")
    pod = deployments[0]["spec"]["template"]["spec"]
    sidecars = [c for c in pod.get("initContainers", [])
                if (c.get("command", []) + c.get("args", []))[1:2] == ["pin"]]
    if not fails.check(len(sidecars) == 1, "expected one init container running `s3-accel pin`"):
        return fails.finish(f"pinning {args.file}")
    c = sidecars[0]
    fails.check(c.get("restartPolicy") == "Always",
                "the pin container must be a native sidecar (restartPolicy: Always): it renews while the pod runs")
    argv = c.get("command", []) + c.get("args", [])
    fails.check(argv[0] == "/usr/local/bin/s3-accel", "the sidecar must run /usr/local/bin/s3-accel")
    known = struct_flags(args.pin_rs, "PinArgs")
    flags = {}
    for arg in argv[2:]:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            fails.check(name in known, f"s3-accel pin has no flag --{name}")
            flags[name] = value
    try:
        lease, every = parse_duration(flags.get("for", "")), parse_duration(flags.get("renew-every", ""))
        fails.check(0 < 2 * every <= lease, "--renew-every must be at most half of --for")
    except ValueError as e:
        fails.check(False, f"--for and --renew-every must be durations: {e}")
    admin = flags.get("admin", "")
    fails.check(re.fullmatch(r"http://s3-accel-peers\.s3-accel\.svc[\w.]*:9090", admin) is not None,
                f"--admin {admin!r} must be the peers Service's admin port (http://s3-accel-peers.s3-accel.svc...:9090)")
    token = flags.get("token-file")
    if fails.check(token, "no --token-file: pins from the network need pins.token_file's token"):
        mount = mount_of(c, token)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        fails.check(mount and "secret" in volumes.get(mount["name"], {}),
                    f"--token-file {token} must be on a Secret's volume mount")
    return fails.finish(f"pinning {args.file}")


def bench_flags(bench_rs):
    """The long flags of s3-accel-bench (bench/src/main.rs, `pub struct Args`)."""
    return struct_flags(bench_rs, "Args")


def cmd_loadtest(args):
    """The load-test Job: indexed, started together, running `s3-accel-bench remote`
    with flags it has, reading a manifest it mounts, writing where it may."""
    fails = Failures()
    docs = load_docs(args.file)
    jobs = find(docs, "Job")
    if not fails.check(len(jobs) == 1, "expected exactly one Job"):
        return fails.finish(f"loadtest {args.file}")
    job = jobs[0]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    fails.check(spec.get("completionMode") == "Indexed", "the Job must be Indexed (each pod knows its index)")
    fails.check(isinstance(spec.get("parallelism"), int) and spec.get("parallelism") == spec.get("completions"),
                "parallelism must equal completions: every pod runs at once")
    fails.check(spec.get("backoffLimit") == 0, "backoffLimit must be 0: a failed pod is a result, not a retry")
    fails.check(pod.get("restartPolicy") == "Never", "restartPolicy must be Never")
    containers = pod.get("containers", [])
    if not fails.check(len(containers) == 1, "expected one container"):
        return fails.finish(f"loadtest {args.file}")
    c = containers[0]
    argv = c.get("command", []) + c.get("args", [])
    fails.check(argv[:2] == ["/usr/local/bin/s3-accel-bench", "remote"], "the container must run `s3-accel-bench remote`")
    known = bench_flags(args.bench_rs)
    flags = {}
    for arg in argv[2:]:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            fails.check(name in known, f"s3-accel-bench has no flag --{name}")
            flags[name] = value
    # Environment: literal env, and every key of the ConfigMaps it takes whole.
    env = {e["name"]: e for e in c.get("env", [])}
    values = {name: e.get("value") for name, e in env.items()}
    for source in c.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        cms = find(docs, "ConfigMap", name)
        if fails.check(cms, f"envFrom ConfigMap {name} is not in the render"):
            values.update(cms[0].get("data", {}))
    for arg in argv:
        for var in re.findall(r"\$\((\w+)\)", arg):
            fails.check(var in values, f"$({var}) in the arguments is defined nowhere")
    start = values.get("START_AT") or flags.get("start-at")
    fails.check(start and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", start),
                "START_AT (the shared start, RFC 3339 UTC) must be set")
    fails.check(values.get("AWS_ENDPOINT_URL_S3") or flags.get("endpoint"), "no --endpoint (AWS_ENDPOINT_URL_S3)")
    for var, key in (("AWS_ACCESS_KEY_ID", "accessKey"), ("AWS_SECRET_ACCESS_KEY", "secretKey")):
        ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
        fails.check(ref.get("key") == key, f"{var} must come from a Secret's key {key}")
    fails.check("POD_NAME" in env, "POD_NAME (the downward API) names each pod's results")
    # The manifest and the results directory are mounts.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    manifest = flags.get("manifest")
    if fails.check(manifest, "no --manifest"):
        mount = mount_of(c, manifest)
        if fails.check(mount, f"--manifest {manifest} is on no volume mount"):
            cm = volumes.get(mount["name"], {}).get("configMap", {})
            cms = find(docs, "ConfigMap", cm.get("name"))
            items = {i["path"]: i["key"] for i in cm.get("items", [])} or None
            file = manifest[len(mount["mountPath"].rstrip("/")) + 1:]
            key = items.get(file) if items is not None else file
            if fails.check(cms and key in cms[0].get("data", {}), f"--manifest {manifest}: no such key in a ConfigMap"):
                for n, line in enumerate(cms[0]["data"][key].splitlines(), 1):
                    line = line.strip()
                    if line and not line.startswith("#"):
                        fails.check(re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S+", line),
                                    f"manifest line {n}: `{line}` is not s3://bucket/key")
    results = flags.get("results")
    if fails.check(results, "no --results"):
        mount = mount_of(c, results)
        fails.check(mount and not mount.get("readOnly") and "emptyDir" in volumes.get(mount["name"], {}),
                    f"--results {results} must be a writable emptyDir (the root filesystem is read-only)")
    sc = c.get("securityContext", {})
    fails.check(sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True
                and "ALL" in sc.get("capabilities", {}).get("drop", []) and sc.get("runAsNonRoot") is True,
                "the container must be non-root, read-only, without capabilities")
    fails.check(re.search(r":[^/]+$", c.get("image", "")) and not c["image"].endswith(":latest"),
                f"image `{c.get('image')}` has no pinned tag")
    fails.check(c.get("resources", {}).get("limits", {}).get("memory"), "the container has no memory limit")
    namespaces = {d["metadata"].get("namespace") for d in docs}
    fails.check(namespaces == {"s3-accel"}, f"objects outside namespace s3-accel: {namespaces}")
    return fails.finish(f"loadtest {args.file}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("schema", help="Kubernetes schemas, strict")
    p.add_argument("file")
    p.add_argument("-k", "--kubernetes-version", action="append", required=True)
    p.set_defaults(run=cmd_schema)
    p = sub.add_parser("consistency", help="cross-object and config checks of a rendered overlay")
    p.add_argument("file")
    p.add_argument("--config-rs", required=True, help="src/config/file.rs")
    p.set_defaults(run=cmd_consistency)
    p = sub.add_parser("servicemonitor", help="the ServiceMonitor against the Services it selects")
    p.add_argument("file")
    p.add_argument("--services-from", required=True, help="a rendered overlay")
    p.set_defaults(run=cmd_servicemonitor)
    p = sub.add_parser("metallb", help="MetalLB objects against their CRDs (a subset)")
    p.add_argument("file")
    p.set_defaults(run=cmd_metallb)
    p = sub.add_parser("loadtest", help="the load-test Job against s3-accel-bench")
    p.add_argument("file")
    p.add_argument("--bench-rs", required=True, help="bench/src/main.rs")
    p.set_defaults(run=cmd_loadtest)
    p = sub.add_parser("pinning", help="the pinning sidecar against s3-accel pin")
    p.add_argument("file")
    p.add_argument("--pin-rs", required=True, help="src/pins/cli.rs")
    p.set_defaults(run=cmd_pinning)
    p = sub.add_parser("grafana", help="the dashboard JSON and its PromQL metric names")
    p.add_argument("file")
    p.set_defaults(run=cmd_grafana)
    p = sub.add_parser("dockerfile", help="minimal Dockerfile lint")
    p.add_argument("file")
    p.set_defaults(run=cmd_dockerfile)
    args = parser.parse_args()
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
