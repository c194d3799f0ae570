"""The Python library of a Sluice server: :class:`Client`, what the ``sluice`` command does, from code.

It is :class:`serve.client.api.SluiceClient` (one method per HTTP call, with its bounded retries) plus what a
program wants on top: uploading files and folders with the command's resume state, and the document calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from serve.client.api import ApiAnswerError, SluiceClient
from serve.client.state import StateFile, default_state_path
from serve.client.uploader import FileResult, Uploader, plan

__all__ = ["ApiAnswerError", "Client", "FileResult"]


class Client(SluiceClient):
    """One tenant's view of a Sluice server; use it as a context manager so its connections are closed.

    Every request retries transient failures (connection errors, timeouts, 429 and 5xx) a bounded number of times;
    any other unexpected answer raises :class:`ApiAnswerError` (``status_code``, ``code``, ``body``), and a server
    that stays unreachable raises ``httpx.TransportError``.

    Args:
        url: the server's base URL (``http://127.0.0.1:8000``).
        tenant: the caller's tenant (names the resume state; may be empty with ``api_key``).
        api_key: sent as ``Authorization: Bearer <key>`` when given. Unlike the command, the library does not read
            ``SLUICE_API_KEY`` itself: a program decides where its secrets come from.
        timeout_s: seconds per request. transport: an ``httpx`` transport (tests: ``httpx.MockTransport``).
        state_file: where unfinished uploads are remembered (default: the command's, ``$SLUICE_STATE_FILE`` or
            ``~/.local/state/sluice/uploads.json``), so an upload interrupted in either is resumed by both.
        attempts: tries per request, the first included.
    """

    def __init__(self, url: str, tenant: str, *, api_key: str | None = None, timeout_s: float = 120.0,
                 transport: httpx.BaseTransport | None = None, state_file: str | os.PathLike[str] | None = None,
                 attempts: int = 6, max_wait_s: float = 20.0) -> None:
        super().__init__(url, tenant, api_key=api_key, timeout_s=timeout_s, attempts=attempts, transport=transport,
                         max_wait_s=max_wait_s)
        self.state = StateFile(Path(state_file) if state_file else default_state_path())

    def upload(self, paths: Iterable[str | os.PathLike[str]], prefix: str = "", parallel: int = 4,
               metadata: dict[str, Any] | None = None, *, jobs: int = 4, part_size: int | None = None,
               on_progress: Callable[[int], None] | None = None,
               on_result: Callable[[FileResult], None] | None = None, transfer: str = "direct") -> list[FileResult]:
        """Upload files and folders as ``sluice upload`` does, resuming what an earlier, interrupted call left.

        A folder keeps its name under ``prefix`` (``docs/a.md`` with ``prefix="kb"`` is ``kb/docs/a.md``). A file
        whose bytes equal its latest version's makes no new version (``deduplicated``).

        Args:
            paths: files and folders. prefix: the document folder to upload into.
            parallel: parts in flight per file. jobs: files uploaded at once.
            metadata: user metadata of every file (``None``: each keeps its previous version's).
            part_size: bytes per part to ask for (``None``: the server's default).
            on_progress: called with a number of bytes each time some are stored (a progress bar).
            on_result: called with each file's result as it is known, in the order of ``paths``.
            transfer: ``direct`` (the parts go straight to S3 when the server offers it) or ``proxy``.

        Returns:
            One result per file, in order. A file the server refused (bad path, too large...) is a result with
            ``ok`` false and its ``error``, not an exception, so one bad file does not stop the others.

        Raises:
            FileNotFoundError: a path does not exist (before anything is sent).
            httpx.TransportError: the server could not be reached, even after the retries.
        """
        if parallel < 1 or jobs < 1:
            raise ValueError(f"parallel={parallel} and jobs={jobs} must be at least 1")
        files = plan(paths, prefix)
        uploader = Uploader(self, self.state, parallel=parallel, part_size=part_size, on_progress=on_progress,
                            metadata=metadata, transfer=transfer)
        results = []
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="file") as pool:
            for result in pool.map(lambda item: uploader.upload(*item), files):
                if on_result is not None:
                    on_result(result)
                results.append(result)
        return results

    def search_batch(self, queries: Iterable[str | dict[str, Any]]) -> list[dict[str, Any]]:
        """``POST /v1/search/batch``: many queries in one request (each a string, or a body as :meth:`search` sends).

        Returns:
            One answer per query, in order, each as :meth:`search` returns it, or ``{"error", "detail"}`` for a query
            that failed (the others still answer).
        """
        body = {"queries": [{"query": q} if isinstance(q, str) else q for q in queries]}
        return self._json(self.request("POST", "/v1/search/batch", json=body), 200)["answers"]

    def document(self, document_id: str) -> dict[str, Any]:
        """``GET /v1/documents/{id}``: its path, ``latest_version``, ``head_version``, ``status``, metadata."""
        return self._json(self.request("GET", f"/v1/documents/{quote(document_id, safe='')}"), 200)

    def versions(self, document_id: str) -> list[dict[str, Any]]:
        """``GET /v1/documents/{id}/versions``: every version, oldest first."""
        return self._json(self.request("GET", f"/v1/documents/{quote(document_id, safe='')}/versions"), 200)

    def delete(self, document_id: str) -> None:
        """``DELETE /v1/documents/{id}``: it leaves search at once; its version history stays listed."""
        self._json(self.request("DELETE", f"/v1/documents/{quote(document_id, safe='')}"), 204)

    def dead_letters(self, document_id: str | None = None, *, open: bool = False,
                     limit: int = 100) -> list[dict[str, Any]]:
        """``GET /v1/dead-letters``: the versions that failed to index and why, newest first.

        Args:
            document_id: only this document's. open: only those not replayed yet. limit: at most this many.
        """
        params: dict[str, Any] = {"open": str(open).lower(), "limit": limit}
        if document_id is not None:
            params["document_id"] = document_id
        return self._json(self.request("GET", "/v1/dead-letters", params=params), 200)
