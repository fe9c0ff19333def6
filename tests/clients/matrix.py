"""The real-client matrix: each client downloads its own object through s3-accel
twice (cold, then warm) and must get the exact bytes both times, with the warm read
costing the origin under 5 % of the object. Run by run.sh, which installs the
clients, starts the origin (s3-test-origin) and the proxy, and passes their
addresses; this file only drives the clients and judges.

    python matrix.py --list                      # the clients, one a line
    python matrix.py --proxy URL --stats URL --access-log FILE --sources DIR --work DIR

Each client reads s3://BUCKET/matrix/<client>.bin, whose content is
SOURCES/<client>.bin. For each read it records the origin's GET body bytes (from
the origin's /stats) and the cache outcomes s3-accel logged for that key (its
JSON access log, target `access`, field `cache`), then prints one line per client:

    client  read1_origin_bytes  read2_origin_bytes  read2_pct  outcomes_read1  outcomes_read2  OK|FAIL

A client passes when both reads exit cleanly with the source's sha256 and the warm
read cost the origin under 5 % of the object; boto3 get_object (a whole-object GET
in checksum mode) must also get the object's x-amz-checksum-crc32 both times.
Exits 1 when any client fails, after printing what it saw for the failed ones.
"""

import argparse
import base64
import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zlib

BUCKET = "matrix"
ACCESS_KEY = "AKIATESTORIGIN"
SECRET_KEY = "origin-secret-key-for-tests"
REGION = "default"
# The warm read may cost the origin at most this share of the object.
WARM_LIMIT_PCT = 5.0
CLIENT_TIMEOUT = 90

CLIENTS = [
    "aws-cli",
    "boto3-download-file",
    "boto3-get-object",
    "rclone",
    "s3cmd",
    "s5cmd",
    "presigned-curl",
]


def key_of(client):
    return f"matrix/{client}.bin"


# ------------------------------------------------------------------ environment


def isolate(work):
    """The environment every client runs in: the origin's keys, region `default`,
    and nothing from the user's own configuration (HOME, AWS_*, proxies)."""
    home = os.path.join(work, "home")
    os.makedirs(home, exist_ok=True)
    for name in list(os.environ):
        upper = name.upper()
        if (
            upper.startswith(("AWS_", "RCLONE_", "S3CMD", "BOTO"))
            or upper in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
        ):
            del os.environ[name]
    for name in ("aws-config", "aws-credentials"):
        open(os.path.join(home, name), "w").close()
    os.environ.update(
        {
            "HOME": home,
            "XDG_CONFIG_HOME": os.path.join(home, ".config"),
            "AWS_CONFIG_FILE": os.path.join(home, "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(home, "aws-credentials"),
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_PAGER": "",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    return home


# ------------------------------------------------------------------ clients


def run(argv, log):
    """Runs a client command; raises with its output when it fails."""
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=CLIENT_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}")


def boto3_client(proxy):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=proxy,
        region_name=REGION,
        # Everything else as boto3 has it by default (retries, checksum validation).
        config=Config(s3={"addressing_style": "path"}),
    )


def read_with(client, ctx, dest):
    """Downloads the client's object to `dest` with that client."""
    key = key_of(client)
    url = f"s3://{BUCKET}/{key}"
    proxy = ctx.proxy
    log = os.path.join(ctx.work, f"{client}.log")
    venv_bin = os.path.dirname(sys.executable)
    if client == "aws-cli":
        run([os.path.join(venv_bin, "aws"), "--endpoint-url", proxy, "s3", "cp", url, dest, "--no-progress"], log)
    elif client == "boto3-download-file":
        boto3_client(proxy).download_file(BUCKET, key, dest)
    elif client == "boto3-get-object":
        response = boto3_client(proxy).get_object(Bucket=BUCKET, Key=key)
        with open(dest, "wb") as out:
            # botocore checks the body against x-amz-checksum-crc32 as it is read.
            shutil.copyfileobj(response["Body"], out, 1 << 20)
        return response["ResponseMetadata"]["HTTPHeaders"]
    elif client == "rclone":
        conf = os.path.join(ctx.home, "rclone.conf")
        open(conf, "a").close()
        run(
            [
                shutil.which("rclone") or "rclone",
                "--config", conf,
                "--s3-provider", "Other",
                "--s3-endpoint", proxy,
                "--s3-access-key-id", ACCESS_KEY,
                "--s3-secret-access-key", SECRET_KEY,
                "--s3-region", REGION,
                "--s3-force-path-style=true",
                "copyto", f":s3:{BUCKET}/{key}", dest,
            ],
            log,
        )
    elif client == "s3cmd":
        host = proxy.split("://", 1)[1]
        conf = os.path.join(ctx.home, "s3cfg")
        with open(conf, "w") as out:
            out.write(
                "[default]\n"
                f"access_key = {ACCESS_KEY}\n"
                f"secret_key = {SECRET_KEY}\n"
                f"host_base = {host}\n"
                f"host_bucket = {host}\n"
                f"bucket_location = {REGION}\n"
                "use_https = False\n"
                "signature_v2 = False\n"
                "progress_meter = False\n"
            )
        run([os.path.join(venv_bin, "s3cmd"), "-c", conf, "get", "--force", url, dest], log)
    elif client == "s5cmd":
        run([os.path.join(venv_bin, "s5cmd"), "--endpoint-url", proxy, "cp", url, dest], log)
    elif client == "presigned-curl":
        presigned = boto3_client(proxy).generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=300
        )
        run(["curl", "-sS", "--fail", "--noproxy", "*", "-o", dest, presigned], log)
    else:
        raise ValueError(f"unknown client {client}")
    return None


# ------------------------------------------------------------------ observing


def origin_stats(ctx):
    with urllib.request.urlopen(ctx.stats + "/stats", timeout=10) as response:
        return json.load(response)


def origin_log(ctx):
    with urllib.request.urlopen(ctx.stats + "/log", timeout=10) as response:
        return response.read().decode().splitlines()


def access_lines(ctx, key):
    """The access-log records s3-accel wrote so far for `key`."""
    records = []
    try:
        with open(ctx.access_log, encoding="utf-8", errors="replace") as log:
            for line in log:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("target") == "access" and record.get("key") == key:
                    records.append(record)
    except FileNotFoundError:
        pass
    return records


def settle(ctx, key):
    """Waits until the access log (written when a body ends) and the origin's
    counters stop moving: a client may return before the proxy logs its last body."""
    last, still_since, deadline = None, time.monotonic(), time.monotonic() + 5
    while time.monotonic() < deadline:
        now = (len(access_lines(ctx, key)), origin_stats(ctx)["body_bytes"])
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= 0.3:
            break
        time.sleep(0.05)


def proxy_warnings(ctx):
    """s3-accel's WARN and ERROR lines, shortened."""
    found = []
    with open(ctx.access_log, encoding="utf-8", errors="replace") as log:
        for line in log:
            try:
                record = json.loads(line)
            except ValueError:
                found.append(line.strip()[:300])
                continue
            if record.get("level") in ("WARN", "ERROR"):
                fields = {k: v for k, v in record.items() if k not in ("timestamp", "level")}
                found.append(f"{record['level']} {json.dumps(fields)[:300]}")
    return found


def summarize(records):
    """`GET:miss x3,HEAD:origin`: outcomes by method, statuses other than
    200/206/304 shown, bypass reasons kept."""
    counts = collections.Counter()
    for r in records:
        cache = str(r.get("cache", "?")).replace("bypass; reason=", "bypass=")
        status = r.get("status")
        label = f"{r.get('method', '?')}:{cache}"
        if status not in (200, 206, 304):
            label += f"/{status}"
        counts[label] += 1
    if not counts:
        return "-"
    return ",".join(f"{label}x{n}" if n > 1 else label for label, n in sorted(counts.items()))


def crc32_b64(path):
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ the matrix


def one_client(client, ctx):
    source = os.path.join(ctx.sources, f"{client}.bin")
    size = os.path.getsize(source)
    want = sha256(source)
    key = key_of(client)
    row = {"client": client, "reads": [], "problems": []}
    for n in (1, 2):
        dest = os.path.join(ctx.work, "out", f"{client}.read{n}")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.exists(dest):
            os.remove(dest)
        before_records = len(access_lines(ctx, key))
        before_log = len(origin_log(ctx))
        before = origin_stats(ctx)
        started = time.monotonic()
        error = None
        headers = None
        try:
            headers = read_with(client, ctx, dest)
        except Exception as e:  # noqa: BLE001 (any client failure is a FAIL row)
            error = f"{type(e).__name__}: {e}"
        seconds = time.monotonic() - started
        settle(ctx, key)
        after = origin_stats(ctx)
        records = access_lines(ctx, key)[before_records:]
        read = {
            "origin_bytes": after["body_bytes"] - before["body_bytes"],
            "origin_requests": after["requests"] - before["requests"],
            "outcomes": summarize(records),
            "records": records,
            "origin_log": origin_log(ctx)[before_log:],
            "seconds": seconds,
        }
        row["reads"].append(read)
        if error:
            row["problems"].append(f"read {n}: {error}")
        elif not os.path.exists(dest):
            row["problems"].append(f"read {n}: no file written")
        elif sha256(dest) != want:
            row["problems"].append(
                f"read {n}: sha256 differs from the source ({os.path.getsize(dest)} bytes, want {size})"
            )
        if headers is not None:
            # A whole-object GET in checksum mode gets the object's CRC32, as from
            # S3 itself (the origin stored it): without it botocore skips its check.
            got = headers.get("x-amz-checksum-crc32")
            if got != crc32_b64(source):
                row["problems"].append(
                    f"read {n}: x-amz-checksum-crc32 is {got!r}, want {crc32_b64(source)!r} "
                    f"(x-s3-accel-cache: {headers.get('x-s3-accel-cache')!r})"
                )
    warm = row["reads"][1]["origin_bytes"]
    row["pct"] = 100.0 * warm / size
    if row["pct"] >= WARM_LIMIT_PCT:
        row["problems"].append(
            f"read 2 cost the origin {warm} bytes = {row['pct']:.1f} % of {size} (limit {WARM_LIMIT_PCT} %)"
        )
    row["ok"] = not row["problems"]
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--proxy")
    parser.add_argument("--stats")
    parser.add_argument("--access-log")
    parser.add_argument("--sources")
    parser.add_argument("--work")
    parser.add_argument("--only", action="append", help="run only this client (repeatable)")
    ctx = parser.parse_args()
    if ctx.list:
        print("\n".join(CLIENTS))
        return 0
    for name in ("proxy", "stats", "access_log", "sources", "work"):
        if not getattr(ctx, name):
            parser.error(f"--{name.replace('_', '-')} is required")
    ctx.home = isolate(ctx.work)
    clients = ctx.only or CLIENTS

    header = ("client", "read1_origin_bytes", "read2_origin_bytes", "read2_pct", "outcomes_read1", "outcomes_read2", "result")
    widths = (20, 18, 18, 9, 40, 40, 6)

    def line(cells):
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    print(line(header), flush=True)
    rows = []
    for client in clients:
        row = one_client(client, ctx)
        rows.append(row)
        r1, r2 = row["reads"]
        print(
            line(
                (
                    client,
                    r1["origin_bytes"],
                    r2["origin_bytes"],
                    f"{row['pct']:.1f}%",
                    r1["outcomes"],
                    r2["outcomes"],
                    "OK" if row["ok"] else "FAIL",
                )
            ),
            flush=True,
        )

    failed = [row for row in rows if not row["ok"]]
    for row in failed:
        print(f"\n--- {row['client']}: FAIL")
        for problem in row["problems"]:
            print(f"  {problem}")
        for n, read in enumerate(row["reads"], 1):
            print(
                f"  read {n}: {read['seconds']:.2f} s, origin: {read['origin_requests']} requests, "
                f"{read['origin_bytes']} body bytes"
            )
            for r in read["records"]:
                print(
                    f"    s3-accel: {r.get('method')} range={r.get('range') or '-'} status={r.get('status')} "
                    f"cache={r.get('cache')!r} bytes={r.get('bytes')} body={r.get('body')}"
                )
            for entry in read["origin_log"]:
                # The query (presign values) is cut: only the path and parameter names.
                method, _, target = entry.partition(" ")
                path, _, query = target.partition("?")
                names = ",".join(p.split("=", 1)[0] for p in query.split("&") if p)
                print(f"    origin:   {method} {path}{'?' + names if names else ''}")
        log = os.path.join(ctx.work, f"{row['client']}.log")
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                tail = f.read().splitlines()[-15:]
            if tail:
                print("  client output (last lines):")
                for l in tail:
                    print(f"    {l}")
    warnings = proxy_warnings(ctx)
    if warnings:
        print(f"\ns3-accel logged {len(warnings)} warning(s) or error(s); the first:")
        for w in warnings[:10]:
            print(f"  {w}")
    print(f"\nclients: {len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
