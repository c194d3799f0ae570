"""Upload throughput through Ray Serve, beside a plain ``put_object`` to the same S3 server.

Starts its own PostgreSQL, Redis and S3 servers, a local Ray and the ``uploads`` Serve application
(:mod:`benchmarks.servers`), writes a file of random bytes, then uploads it four ways in one run:

1. ``put_object`` of the file straight to S3 with the MinIO SDK (the limit: no Serve, no verification);
2. the raw API, proxied: create, 4 parts in parallel through Serve (``Content-MD5`` each), complete;
3. ``sluice upload`` (the client CLI, in a subprocess, 4 parallel parts), direct: each part signed by Serve for its
   MD5 and sent straight to S3; completion checks the parts' ETags and joins them at the document's key;
4. ``sluice upload --transfer proxy``: the parts through Serve.

The direct put and the direct ``sluice upload`` are measured side by side ``--rounds`` times (alternating, with Ray
and Serve running for both, each to a new path); their ratio is given per round and as the median (the machine's
noise moves both). Each upload goes to its own path; each proxied upload ends with the server's read-back SHA-256 check and the copy to
the document's key, both counted; a direct one has neither. Every CLI run includes its interpreter's start and its
hashing of the file. Prints one JSON line: MB/s of each, their ratios to the plain put, the part bytes that passed
through the replica, the CPU seconds (user + system) of each ``sluice upload`` process, and the peak RSS of the Serve
replica (and of the Serve proxy) sampled every 0.25 s.

    python benchmarks/upload_throughput.py [--size-mib 512] [--part-mib 16] [--parallel 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sampling import PeriodicSampler  # noqa: E402
from benchmarks.servers import bench_servers, serve_app, settings_overrides, start_ray, stop_ray  # noqa: E402

from tests.auth import bearer, make_key

MB = 1_000_000
MiB = 1024**2
TENANT = "bench"


class PeakRss(PeriodicSampler):
    """Samples some processes every 0.25 s; ``peak[name]`` is the largest RSS, ``peak_uss[name]`` the largest USS.

    RSS counts the shared-memory pages of Ray's object store that a process maps; USS (memory private to the
    process) does not, so it is the replica's own footprint.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(0.25)
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items() if pid}
        self.peak = {name: 0 for name in self.procs}
        self.peak_uss = {name: 0 for name in self.procs}

    def sample(self) -> None:
        """Update the peaks from each process's current RSS and USS."""
        for name, proc in self.procs.items():
            try:
                info = proc.memory_full_info()
                self.peak[name] = max(self.peak[name], info.rss)
                self.peak_uss[name] = max(self.peak_uss[name], info.uss)
            except psutil.Error:
                pass


def _proxy_pid() -> int:
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if "ProxyActor" in " ".join(proc.info["cmdline"] or []):
            return proc.info["pid"]
    return 0


def raw_api_upload(base_url: str, path: Path, remote: str, sha256: str, parallel: int, part_size: int) -> dict:
    """Create, send the parts ``parallel`` at a time, complete; returns the completion's answer."""
    size = path.stat().st_size
    with httpx.Client(base_url=base_url, timeout=600, headers=bearer(TENANT)) as http:
        created = http.post("/v1/uploads", json={"path": remote, "size": size, "sha256": sha256, "part_size": part_size})
        created.raise_for_status()
        body = created.json()
        fd = os.open(path, os.O_RDONLY)

        def send(n: int) -> None:
            offset = (n - 1) * body["part_size"]
            data = os.pread(fd, min(body["part_size"], size - offset), offset)
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            http.put(f"/v1/uploads/{body['upload_id']}/parts/{n}", content=data, headers={"Content-MD5": md5}).raise_for_status()

        try:
            with ThreadPoolExecutor(parallel) as pool:
                list(pool.map(send, range(1, body["part_count"] + 1)))
        finally:
            os.close(fd)
        parts_done = time.perf_counter()
        done = http.post(f"/v1/uploads/{body['upload_id']}/complete")
        done.raise_for_status()
        return {**done.json(), "complete_s": time.perf_counter() - parts_done}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512, help="file size in MiB (default %(default)s)")
    parser.add_argument("--part-mib", type=int, default=16, help="part size in MiB (default %(default)s)")
    parser.add_argument("--parallel", type=int, default=4, help="parts in flight (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="paired direct-put / direct-upload rounds (default %(default)s)")
    args = parser.parse_args(argv)

    from ray import serve

    from core.objects import ObjectStore
    from serve.uploads.app import build_app

    part_size = args.part_mib * MiB
    with tempfile.TemporaryDirectory(prefix="sluice-upload-bench-") as tmp:
        root = Path(tmp)
        with bench_servers(root, qdrant_path=root / "qdrant", upload_part_size=part_size) as settings:
            try:
                objects = ObjectStore(settings, timeout_s=600)
                objects.ensure_bucket()
                data_path = root / "payload.bin"
                with open(data_path, "wb") as f:
                    for _ in range(args.size_mib):
                        f.write(os.urandom(MiB))
                size = data_path.stat().st_size
                sha256 = hashlib.sha256(data_path.read_bytes()).hexdigest()

                # Warm up: the first writes to a new bucket make SeaweedFS grow its volumes (a whole file's worth).
                objects.client.fput_object("bench", "warm-up", str(data_path), part_size=part_size)
                objects.remove("warm-up")

                start_ray()
                app = build_app({"settings_overrides": settings_overrides(settings)})
                base_url = serve_app(app, "uploads", "/v1/uploads")
                handle = serve.get_deployment_handle("UploadsAPI", app_name="uploads")
                replica_pid = handle.replica_pid.remote().result()

                replica_before = psutil.Process(replica_pid).memory_full_info()
                with PeakRss({"replica": replica_pid, "proxy": _proxy_pid()}) as rss:
                    started = time.perf_counter()
                    raw = raw_api_upload(base_url, data_path, "raw/payload.bin", sha256, args.parallel, part_size)
                    raw_s = time.perf_counter() - started

                    def sluice_upload(transfer: str, prefix: str) -> float:
                        before = handle.part_bytes_received.remote().result()
                        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
                        started = time.perf_counter()
                        cli = subprocess.run(
                            [sys.executable, "-m", "serve.client.cli", "--url", base_url, "--tenant", TENANT, "upload",
                             str(data_path), "--to", prefix, "--parallel", str(args.parallel),
                             "--part-size-mib", str(args.part_mib), "--state-file", str(root / "client-state.json"),
                             "--no-progress", "--transfer", transfer],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                            env=dict(os.environ, SLUICE_API_KEY=make_key(TENANT, "writer")),
                        )
                        seconds = time.perf_counter() - started
                        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
                        cli_cpu_s.setdefault(transfer, []).append(round(cpu.ru_utime - cpu_before.ru_utime
                                                                        + cpu.ru_stime - cpu_before.ru_stime, 2))
                        if cli.returncode != 0:
                            raise RuntimeError(f"sluice upload failed ({cli.returncode}): {cli.stderr[-2000:]}")
                        through_replica[transfer] = handle.part_bytes_received.remote().result() - before
                        return seconds

                    through_replica: dict[str, int] = {}
                    cli_cpu_s: dict[str, list[float]] = {}
                    put_s, direct_upload_s = [], []
                    for n in range(args.rounds):
                        started = time.perf_counter()
                        objects.client.fput_object("bench", f"{TENANT}/put-{n}/payload.bin", str(data_path),
                                                   part_size=part_size)
                        put_s.append(time.perf_counter() - started)
                        direct_upload_s.append(sluice_upload("direct", f"cli-direct-{n}"))
                    proxy_upload_s = sluice_upload("proxy", "cli-proxy")
                part_peak = handle.part_memory_peak.remote().result()
                stored = ["raw", "cli-proxy"] + [f"{p}-{n}" for n in range(args.rounds) for p in ("put", "cli-direct")]
                stored_ok = all(objects.stat(f"{TENANT}/{p}/payload.bin").size == size for p in stored)
                stored_ok = stored_ok and raw["sha256"] == sha256
            finally:
                stop_ray()

    def mbps(seconds: float) -> float:
        return round(size / MB / seconds, 1)

    direct_s = statistics.median(put_s)
    round_ratios = [round(p / u, 3) for p, u in zip(put_s, direct_upload_s)]

    result = {
        "benchmark": "upload_throughput",
        "size_mib": args.size_mib,
        "part_mib": args.part_mib,
        "parallel_parts": args.parallel,
        "direct_put_object_mb_s": mbps(direct_s),
        "raw_api_proxy_mb_s": mbps(raw_s),
        "sluice_upload_direct_mb_s": mbps(statistics.median(direct_upload_s)),
        "sluice_upload_proxy_mb_s": mbps(proxy_upload_s),
        "sluice_upload_direct_ratio": statistics.median(round_ratios),
        "sluice_upload_direct_ratio_per_round": round_ratios,
        "raw_api_proxy_ratio": round(direct_s / raw_s, 3),
        "sluice_upload_proxy_ratio": round(direct_s / proxy_upload_s, 3),
        "seconds": {"direct_put": [round(x, 2) for x in put_s], "sluice_upload_direct": [round(x, 2) for x in direct_upload_s],
                    "raw_api_proxy": round(raw_s, 2), "raw_api_proxy_complete": round(raw["complete_s"], 2),
                    "sluice_upload_proxy": round(proxy_upload_s, 2)},
        "part_bytes_through_replica": through_replica,
        "sluice_upload_cpu_s": cli_cpu_s,
        "replica_peak_rss_mib": round(rss.peak.get("replica", 0) / MiB, 1),
        "replica_rss_before_mib": round(replica_before.rss / MiB, 1),
        "replica_peak_uss_mib": round(rss.peak_uss.get("replica", 0) / MiB, 1),
        "replica_uss_before_mib": round(replica_before.uss / MiB, 1),
        "proxy_peak_rss_mib": round(rss.peak.get("proxy", 0) / MiB, 1),
        "replica_part_memory_peak_mib": round(part_peak / MiB, 1),
        "stored_sizes_ok": stored_ok,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
