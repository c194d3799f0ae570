"""Serve application ``search`` at route prefix ``/v1/search``: ``POST /v1/search`` and ``POST /v1/search/batch``.

Two deployments (Ray Serve documentation, "Deploy Compositions of Models"):

* ``SearchAPI``, the FastAPI ingress: authenticates the caller (``serve.auth``: a reader of its tenant) and
  validates the body, then calls the searcher through a ``DeploymentHandle``. Light, so one replica takes many
  requests at once.
* ``Searcher``: one :class:`SearchEngine` per replica (the model loads once). Query embeddings of concurrent
  requests are encoded together by ``@serve.batch``. Its ``max_ongoing_requests`` bounds the searches a replica
  runs at once and its ``max_queued_requests`` the requests waiting for one; past that the handle raises
  ``BackPressureError`` at once and the ingress answers **503** ``{"error": "overloaded"}`` with ``Retry-After``,
  instead of queueing without bound (the queue, not the CPU, is what grows memory under overload). Autoscaling
  adds replicas when the ongoing requests per replica pass the target (``serve/config.yaml``).

Every response carries ``X-Request-ID``; errors are JSON ``{"error": code, "detail": text}``. Built by
:func:`build_app` for ``serve deploy serve/config.yaml``.
"""


import asyncio
import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from core import metrics
from core.access import Principal, Role
from core.errors import ServiceUnavailableError
from core.settings import Settings
from serve.http import ApiError, install_common_handlers, read_json_body, validation_detail
from serve import openapi
from serve.auth import Authenticator, allow
from serve.search.engine import SearchEngine
from serve.search.models import BatchAnswer, SearchAnswer
from serve.search.query import BatchRequest, SearchRequest

logger = logging.getLogger(__name__)

#: Seconds the ingress waits for one search (or one batch) before answering 503 ``timeout``.
SEARCH_TIMEOUT_S = 30.0
#: Seconds a client is told to wait after a 503 (``Retry-After``).
RETRY_AFTER_S = 1
#: How long the first query of an embedding batch waits for others: none. Queries that arrive while the model is
#: busy are batched anyway (one batch runs at a time); waiting only delayed a lone query. Measured with
#: ``benchmarks/search_latency.py`` on Vaswani, 3 ms against 0: cold p50 at concurrency 1 51.8 against 42.1 ms,
#: cold queries/s at 8 32.5 against 35.2, warm unchanged (24.4 against 23.6 ms, 65 queries/s at 8).
BATCH_WAIT_S = 0.0


@serve.deployment(
    name="Searcher",
    max_ongoing_requests=16,
    max_queued_requests=64,
    ray_actor_options={"num_cpus": 0.4},
)
class Searcher:
    """Runs searches: answer cache, batched query embeddings, the Qdrant query.

    Args:
        settings_overrides: ``Settings`` fields that override the environment (tests use it).
        max_batch_size: most query texts embedded in one model call. batch_wait_timeout_s: how long the first
            query of a batch waits for others.
    """

    def __init__(self, settings_overrides: dict[str, Any] | None = None, max_batch_size: int = 32,
                 batch_wait_timeout_s: float = BATCH_WAIT_S) -> None:
        self.settings = Settings(**(settings_overrides or {}))
        self.engine = SearchEngine(self.settings)
        self.engine.warm_up()
        self._embed_batch.set_max_batch_size(max_batch_size)
        self._embed_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        """Embeds the query texts of concurrent searches in one model call (texts found missing from the cache)."""
        vectors = await asyncio.to_thread(self.engine.embed_queries, texts, look_up=False)
        return [v for v in vectors]

    def _prepare(self, tenant: str, req: SearchRequest) -> tuple[str | None, dict[str, Any] | None, Any]:
        """The answer cache's key and hit, and the query's cached embedding: one thread hop for both lookups."""
        key, hit = self.engine.lookup(tenant, req)
        if hit is not None or not self.engine.needs_dense(req):
            return key, hit, None
        return key, None, self.engine.cached_embedding(req.query)

    async def _search(self, tenant: str, req: SearchRequest) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            key, hit, dense = await asyncio.to_thread(self._prepare, tenant, req)
            if hit is not None:
                return hit
            if dense is None and self.engine.needs_dense(req):  # only a query not cached waits for a batch
                dense = await self._embed_batch(req.query)
            return await asyncio.to_thread(self.engine.run, tenant, req, dense=dense, key=key, started=started)
        except ServiceUnavailableError as exc:
            logger.error("search failed: %s", exc)
            return {"error": "service_unavailable", "detail": f"{exc.service} is unavailable", "status": 503}

    async def search(self, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
        """One search; ``body`` is a validated :class:`SearchRequest` as JSON. Errors come back as a dict with
        ``error``, ``detail`` and ``status``."""
        return await self._search(tenant, SearchRequest.model_validate(body))

    async def search_many(self, tenant: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Several searches at once, answered in order: cached answers from Redis, the other queries embedded in one
        model call and sent to the vector store in one batch query."""
        started = time.perf_counter()
        reqs = [SearchRequest.model_validate(b) for b in bodies]
        try:
            looked = await asyncio.to_thread(lambda: [self.engine.lookup(tenant, r) for r in reqs])
            todo = [i for i, (_, hit) in enumerate(looked) if hit is None]
            texts = [reqs[i].query for i in todo if self.engine.needs_dense(reqs[i])]
            vectors = iter(await asyncio.to_thread(self.engine.embed_queries, texts) if texts else [])
            dense = [next(vectors) if self.engine.needs_dense(reqs[i]) else None for i in todo]
            answers = await asyncio.to_thread(self.engine.run_many, tenant, [reqs[i] for i in todo], dense=dense,
                                              keys=[looked[i][0] for i in todo], started=started)
        except ServiceUnavailableError as exc:
            logger.error("search batch failed: %s", exc)
            error = {"error": "service_unavailable", "detail": f"{exc.service} is unavailable", "status": 503}
            return [error for _ in reqs]
        out: list[dict[str, Any]] = [hit for _, hit in looked]
        for i, answer in zip(todo, answers):
            out[i] = answer
        return out


class _PrefixRoot:
    """ASGI middleware: a request for the route prefix itself (``POST /v1/search``) reaches the route ``/``.

    Serve mounts the app at its route prefix (``root_path``) and passes the full path; Starlette matches the rest,
    which is empty for ``/v1/search``, and would answer 307 to ``/v1/search/`` (a POST a client may not follow).
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            root, path = scope.get("root_path", ""), scope["path"]
            if path == root or path == "":
                scope = dict(scope, path=f"{path}/", raw_path=f"{path}/".encode())
        await self.app(scope, receive, send)


api = FastAPI(title="Sluice search", version="0.2.0", generate_unique_id_function=openapi.operation_id(""))
install_common_handlers(api)
api.add_middleware(_PrefixRoot)
#: The request bodies the routes read themselves (``serve.openapi.json_body``).
BODIES = (SearchRequest, BatchRequest)
openapi.install(api, BODIES)
#: What either search route may answer besides 200.
_ERRORS = openapi.errors(400, 401, 413, 422, 503)


def _error(status: int, code: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers or None)


async def _await(response: Any) -> Any:
    return await response


#: The largest JSON body accepted: a batch of the most queries, each of the longest text, fits with room to spare.
MAX_JSON_BYTES = 1024 * 1024


async def _body(request: Request, model: type[BaseModel]) -> BaseModel | JSONResponse:
    try:
        return model.model_validate(await read_json_body(request, MAX_JSON_BYTES))
    except ApiError as exc:
        return exc.response()
    except ValidationError as exc:
        return _error(422, "invalid_request", validation_detail(exc))


@serve.deployment(name="SearchAPI", max_ongoing_requests=256, max_queued_requests=256, ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class SearchAPI:
    """The ingress: validation, the tenant, and the mapping of the searcher's answers and overload to HTTP.

    Args:
        searcher: the handle of the :class:`Searcher` deployment.
        settings_overrides: ``Settings`` fields that override the environment (the authentication settings).
    """

    def __init__(self, searcher: DeploymentHandle, settings_overrides: dict[str, Any] | None = None) -> None:
        self.searcher = searcher
        api.state.auth = Authenticator(Settings(**(settings_overrides or {})))

    async def _call(self, method: str, *args: Any) -> Any:
        response = getattr(self.searcher, method).remote(*args)
        try:
            return await asyncio.wait_for(_await(response), timeout=SEARCH_TIMEOUT_S)
        except BackPressureError as exc:
            logger.warning("search overloaded: %s", exc)
            metrics.search_overload("overloaded")
            return _error(503, "overloaded", "too many searches in flight; retry shortly", **{"Retry-After": str(RETRY_AFTER_S)})
        except asyncio.TimeoutError:
            response.cancel()
            metrics.search_overload("timeout")
            return _error(503, "timeout", f"the search took over {SEARCH_TIMEOUT_S:.0f} s", **{"Retry-After": str(RETRY_AFTER_S)})

    @api.post("/", response_model=SearchAnswer, responses=_ERRORS, openapi_extra=openapi.json_body(SearchRequest))
    async def search(self, request: Request, caller: Principal = Depends(allow(Role.READER))) -> JSONResponse:
        """Answer one query (body: :class:`SearchRequest`)."""
        tenant = caller.tenant
        body = await _body(request, SearchRequest)
        if isinstance(body, JSONResponse):
            return body
        answer = await self._call("search", tenant, body.model_dump(mode="json"))
        if isinstance(answer, JSONResponse):
            return answer
        if "error" in answer:
            return _error(answer.pop("status", 500), answer["error"], answer["detail"], **{"Retry-After": str(RETRY_AFTER_S)})
        return JSONResponse(answer)

    @api.post("/batch", response_model=BatchAnswer, responses=_ERRORS, openapi_extra=openapi.json_body(BatchRequest))
    async def search_batch(self, request: Request, caller: Principal = Depends(allow(Role.READER))) -> JSONResponse:
        """Answer up to ``MAX_BATCH_QUERIES`` queries at once (body: :class:`BatchRequest`).

        Returns:
            ``{"answers": [...], "took_ms"}``: one answer per query, in order, each as ``POST /v1/search`` gives
            it, or ``{"error", "detail"}`` for a query that failed.
        """
        started = time.perf_counter()
        tenant = caller.tenant
        body = await _body(request, BatchRequest)
        if isinstance(body, JSONResponse):
            return body
        answers = await self._call("search_many", tenant, [q.model_dump(mode="json") for q in body.queries])
        if isinstance(answers, JSONResponse):
            return answers
        for answer in answers:
            answer.pop("status", None)
        return JSONResponse({"answers": answers, "took_ms": round((time.perf_counter() - started) * 1000, 3)})


class DeploymentOptions(BaseModel):
    """``.options()`` of one deployment, for tests and benchmarks; ``serve/config.yaml`` overrides them too."""

    model_config = {"extra": "forbid"}

    max_ongoing_requests: int | None = Field(default=None, ge=1)
    max_queued_requests: int | None = Field(default=None, ge=-1)
    num_replicas: int | None = Field(default=None, ge=1)
    ray_actor_options: dict[str, Any] | None = None


class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (the ``args`` of the application in ``serve/config.yaml``).

    Attributes:
        settings_overrides: ``Settings`` fields that override the replicas' environment.
        searcher, ingress: deployment options (limits, replicas) applied in code.
        max_batch_size, batch_wait_timeout_s: the ``@serve.batch`` of query embeddings.
    """

    model_config = {"extra": "forbid"}

    settings_overrides: dict[str, Any] = {}
    searcher: DeploymentOptions = DeploymentOptions()
    ingress: DeploymentOptions = DeploymentOptions()
    max_batch_size: int = Field(default=32, ge=1, le=256)
    batch_wait_timeout_s: float = Field(default=BATCH_WAIT_S, ge=0, le=1)


def build_app(args: dict[str, Any]) -> Application:
    """Build the ``search`` application (Ray Serve "application builder" pattern)."""
    parsed = AppArgs.model_validate(args or {})
    searcher = Searcher.options(**parsed.searcher.model_dump(exclude_none=True)).bind(
        parsed.settings_overrides or None, parsed.max_batch_size, parsed.batch_wait_timeout_s
    )
    return SearchAPI.options(**parsed.ingress.model_dump(exclude_none=True)).bind(
        searcher, parsed.settings_overrides or None)
