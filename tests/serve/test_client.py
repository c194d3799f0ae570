"""The ``sluice`` command: uploading folders (resumably) through a real Serve app, and printing search results."""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from pathlib import Path

import httpx
import pytest

from serve.client.api import SluiceClient
from serve.client.cli import main
from serve.client.state import StateFile
from serve.client.uploader import Uploader, file_digests, file_sha256, plan
from tests.auth import make_key
from tests.serve.upload_helpers import PART, MiB, Uploads, settings_overrides

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base_url(upload_settings, objects, serve_http) -> str:
    from serve.uploads.app import build_app

    return serve_http(build_app({"settings_overrides": settings_overrides(upload_settings)}), "uploads",
                      route_prefix="/v1/uploads")


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("# A\n\nHello.\n")
    (root / "sub" / "big.bin").write_bytes(os.urandom(2 * PART + 123))
    (root / "empty.txt").write_bytes(b"")
    (root / unicodedata.normalize("NFD", "café.txt")).write_text("crème")
    return root


def sluice(base_url: str, tenant: str, state: Path, *args: str) -> int:
    return main(["--url", base_url, "--tenant", tenant, "--api-key", make_key(tenant, "writer"), "upload", *args,
                 "--state-file", str(state), "--no-progress"])


def test_uploading_a_folder_keeps_its_layout(base_url, tenant, folder, objects, tmp_path, capsys):
    assert sluice(base_url, tenant, tmp_path / "state.json", str(folder), "--to", "kb") == 0
    out = capsys.readouterr().out
    assert out.count("uploaded") == 4
    for path in folder.rglob("*"):
        if path.is_file():
            key = unicodedata.normalize("NFC", f"{tenant}/kb/docs/{path.relative_to(folder).as_posix()}")
            assert objects.get_bytes(key) == path.read_bytes()
    assert json.loads((tmp_path / "state.json").read_text()) == {}

    assert sluice(base_url, tenant, tmp_path / "state.json", str(folder), "--to", "kb") == 0
    assert capsys.readouterr().out.count("unchanged") == 4  # the same bytes make no new version


@pytest.mark.parametrize("transfer", ["direct", "proxy"])
def test_an_interrupted_upload_resumes_with_the_missing_parts(base_url, tenant, tmp_path, objects, capsys, transfer):
    data = os.urandom(3 * PART + 1)
    local = tmp_path / "large.bin"
    local.write_bytes(data)
    state = StateFile(tmp_path / "state.json")

    class Flaky(SluiceClient):
        sent = 0

        def _fail_after_two(self):
            if Flaky.sent >= 2:
                raise httpx.ConnectError("the network went away")
            Flaky.sent += 1

        def put_part(self, upload_id, part_number, data):
            self._fail_after_two()
            return super().put_part(upload_id, part_number, data)

        def put_presigned(self, signed, data):
            self._fail_after_two()
            return super().put_presigned(signed, data)

    with Flaky(base_url, tenant, api_key=make_key(tenant, "writer"), attempts=1) as flaky, pytest.raises(httpx.ConnectError):
        Uploader(flaky, state, parallel=1, transfer=transfer).upload(local, "big/large.bin")
    (entry,) = json.loads(state.path.read_text()).values()
    server = Uploads(base_url, tenant)
    status = server.status(entry["upload_id"]).json()
    assert status["transfer"] == transfer and status["received_parts"] == [1, 2]

    assert sluice(base_url, tenant, state.path, str(local), "--to", "big", "--transfer", transfer) == 0
    assert "resumed" in capsys.readouterr().out
    finished = server.status(entry["upload_id"]).json()
    assert finished["status"] == "completed" and finished["result"]["version"] == 1
    assert finished["result"]["verified"] == ("md5_parts" if transfer == "direct" else "sha256")
    assert objects.get_bytes(f"{tenant}/big/large.bin") == data


def test_a_direct_upload_sends_no_part_bytes_through_the_server(base_url, tenant, tmp_path, objects):
    from ray import serve

    replica = serve.get_deployment_handle("UploadsAPI", app_name="uploads")
    data = os.urandom(3 * PART + 11)
    (tmp_path / "file.bin").write_bytes(data)
    received = []
    for transfer in ("direct", "proxy"):
        before = replica.part_bytes_received.remote().result()
        assert sluice(base_url, tenant, tmp_path / "s.json", str(tmp_path / "file.bin"), "--to", transfer,
                      "--transfer", transfer) == 0
        assert objects.get_bytes(f"{tenant}/{transfer}/file.bin") == data
        received.append(replica.part_bytes_received.remote().result() - before)
    assert received == [0, len(data)]  # direct: S3 got every byte, the server none


def test_a_file_changed_since_the_interruption_starts_over(base_url, tenant, tmp_path, objects, capsys):
    local = tmp_path / "notes.txt"
    local.write_bytes(b"first draft")
    state = StateFile(tmp_path / "state.json")
    with SluiceClient(base_url, tenant, api_key=make_key(tenant, "writer")) as client:
        created = client.create_upload("notes.txt", local.stat().st_size)
    state.put(StateFile.key(base_url, tenant, "notes.txt"),
              {"local": str(local.resolve()), "size": 11, "mtime_ns": 1, "upload_id": created["upload_id"], "sha256": "0" * 64})
    local.write_bytes(b"second draft, longer")
    assert sluice(base_url, tenant, state.path, str(local)) == 0
    assert objects.get_bytes(f"{tenant}/notes.txt") == b"second draft, longer"
    assert Uploads(base_url, tenant).status(created["upload_id"]).json()["status"] == "aborted"


def test_usage_errors_exit_2(base_url, tmp_path, capsys):
    assert main(["--url", base_url, "--tenant", "", "upload", str(tmp_path)]) == 2
    assert main(["--url", base_url, "--tenant", "x", "upload", str(tmp_path / "nope")]) == 2
    assert main(["--url", "http://127.0.0.1:9", "--tenant", "x", "search", "q"]) == 2
    assert "cannot reach" in capsys.readouterr().err


def test_a_refused_file_is_reported_and_the_others_go_on(base_url, tenant, tmp_path, objects, capsys):
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / ("n" * 250 + ".txt")).write_text("its key would pass 1024 bytes")
    prefix = "/".join(["p" * 200] * 4)
    files = [str(tmp_path / "ok.txt"), str(tmp_path / ("n" * 250 + ".txt"))]
    assert sluice(base_url, tenant, tmp_path / "s.json", *files, "--to", prefix) == 1
    out = capsys.readouterr().out
    assert "uploaded" in out and "failed" in out and "bad_path" in out
    assert objects.get_bytes(f"{tenant}/{prefix}/ok.txt") == b"fine"


#: A key as ``python -m jobs.keys`` shapes them (the mock server never checks it).
KEY = "sluice_0123456789abcdef_" + "k" * 43


def test_search_prints_ranked_results():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["authorization"] = request.headers["Authorization"]
        seen["body"] = json.loads(request.content)
        return httpx.Response(200, json={"results": [
            {"point_id": "p", "document_id": "d", "version": 2, "path": "guide/rivers.md", "modality": "text",
             "chunk_index": 0, "text": "The Danube flows\nthrough ten countries.", "score": 0.5, "links": []},
        ], "took_ms": 12.0, "cached": False})

    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--url", "http://sluice.test", "--api-key", KEY, "search", "river", "--top-k", "3"],
                    transport=httpx.MockTransport(handler))
    assert code == 0
    assert seen == {"authorization": f"Bearer {KEY}", "body": {"query": "river", "top_k": 3, "mode": "hybrid"}}
    assert "guide/rivers.md" in out.getvalue() and "The Danube flows through ten countries." in out.getvalue()


def test_transient_answers_are_retried():
    answers = iter([httpx.Response(503), httpx.Response(502), httpx.Response(200, json={"results": [], "took_ms": 1})])
    with SluiceClient("http://sluice.test", "acme", transport=httpx.MockTransport(lambda r: next(answers)),
                      max_wait_s=0.01) as client:
        assert client.search("q")["results"] == []
    with SluiceClient("http://sluice.test", "acme", attempts=2, max_wait_s=0.01,
                      transport=httpx.MockTransport(lambda r: httpx.Response(503))) as client:
        assert client.request("GET", "/x").status_code == 503


def test_plan_names_files_like_cp(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f.txt").write_text("f")
    (tmp_path / "g.txt").write_text("g")
    assert [r for _, r in plan([tmp_path / "d", tmp_path / "g.txt"])] == ["d/e/f.txt", "g.txt"]
    assert [r for _, r in plan([tmp_path / "d"], "/kb/")] == ["kb/d/e/f.txt"]
    with pytest.raises(FileNotFoundError):
        plan([tmp_path / "missing"])
    assert MiB == 1024**2


@pytest.mark.parametrize("size", [0, 1, 4096, 4096 * 3, 4096 * 3 + 5])
def test_one_read_gives_the_file_sha256_and_each_part_md5(tmp_path, size):
    data = os.urandom(size)
    (tmp_path / "f.bin").write_bytes(data)
    sha256, md5s = file_digests(tmp_path / "f.bin", 4096)
    assert sha256 == hashlib.sha256(data).hexdigest() == file_sha256(tmp_path / "f.bin")
    assert md5s == [hashlib.md5(data[i : i + 4096]).hexdigest() for i in range(0, size, 4096)]


def test_an_unreachable_s3_fails_the_file_with_a_hint_and_not_the_run(base_url, tenant, tmp_path, unused_port):
    class ElsewhereS3(SluiceClient):
        """Part URLs pointing where no S3 listens (a server whose ``SLUICE_S3_PUBLIC_URL`` is wrong)."""

        def part_urls(self, upload_id, digests):
            signed = super().part_urls(upload_id, digests)
            return [dict(p, url=str(httpx.URL(p["url"]).copy_with(port=unused_port))) for p in signed]

    (tmp_path / "f.bin").write_bytes(os.urandom(PART + 1))
    with ElsewhereS3(base_url, tenant, api_key=make_key(tenant, "writer"), attempts=1) as client:
        result = Uploader(client, StateFile(tmp_path / "s.json")).upload(tmp_path / "f.bin", "f.bin")
    assert not result.ok and "SLUICE_S3_PUBLIC_URL" in result.error and "--transfer proxy" in result.error
