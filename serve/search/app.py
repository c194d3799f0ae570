"""Serve application ``search``: ``POST /v1/search`` (FastAPI ingress).

The caller's tenant is the ``X-User-ID`` header (until authentication replaces it); every response carries
``X-Request-ID`` (the client's, or a new uuid4); errors are JSON ``{"error": code, "detail": text}``.
Built by :func:`build_app` for ``serve deploy serve/config.yaml``.
"""

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve import Application

from core.errors import ServiceUnavailableError
from core.settings import Settings
from serve.http import install_common_handlers, tenant_of, validation_detail
from serve.search.engine import SearchEngine, SearchRequest

logger = logging.getLogger(__name__)

api = FastAPI(title="Sluice search", version="0.1.0")
install_common_handlers(api)


@serve.deployment(name="SearchAPI", max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(api)
class SearchAPI:
    """The search deployment: one :class:`SearchEngine` per replica (the model loads once, in ``__init__``).

    Args:
        settings_overrides: ``Settings`` fields that override the environment (tests use it).
    """

    def __init__(self, settings_overrides: dict[str, Any] | None = None) -> None:
        self.settings = Settings(**(settings_overrides or {}))
        self.engine = SearchEngine(self.settings)
        self.engine.warm_up()

    @api.post("/v1/search")
    async def search(self, request: Request) -> JSONResponse:
        """Answer one query (body: :class:`SearchRequest`)."""
        tenant = tenant_of(request)
        try:
            body = SearchRequest.model_validate(await request.json())
        except ValidationError as exc:
            return JSONResponse({"error": "invalid_request", "detail": validation_detail(exc)}, status_code=422)
        except ValueError:
            return JSONResponse({"error": "invalid_json", "detail": "the body is not JSON"}, status_code=400)
        try:
            answer = await asyncio.to_thread(self.engine.search, tenant, body)
        except ServiceUnavailableError as exc:
            logger.error("search failed: %s", exc)
            return JSONResponse({"error": "service_unavailable", "detail": f"{exc.service} is unavailable"}, status_code=503)
        return JSONResponse(answer)


class AppArgs(BaseModel):
    """Arguments of ``build_app`` (the ``args`` of the application in ``serve/config.yaml``)."""

    settings_overrides: dict[str, Any] = {}


def build_app(args: dict[str, Any]) -> Application:
    """Build the ``search`` application (Ray Serve "application builder" pattern)."""
    parsed = AppArgs.model_validate(args or {})
    return SearchAPI.bind(parsed.settings_overrides or None)
