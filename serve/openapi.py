"""The typed description of the HTTP API: error bodies, declared request bodies, and one document for all of it.

Each application's ``openapi.json`` is complete (request bodies, answers and errors, status by status), so a client
generator or ``/docs`` sees the whole contract (README, "HTTP API"):

* ``/v1/search/openapi.json`` and ``/v1/uploads/openapi.json``: one application each;
* ``/v1/openapi.json`` (Swagger UI at ``/v1/docs``): the three applications in one document, every path absolute.

Routes that read their own body (to bound its size while streaming it, and to give errors their contract codes
before pydantic sees the body) declare it with :func:`json_body`; :func:`describe` then adds the model's schema to
the document's components, as FastAPI does for the models it parses itself. Every error answer is
:class:`ErrorBody`, declared per route with :func:`errors`; FastAPI's own 422 schema is never shown, because
``serve.http`` renders validation errors as an ``ErrorBody`` too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict

#: The security scheme every ``/v1/...`` route but the health probes requires (README, "Security").
SECURITY_SCHEME = "bearer"
SECURITY_SCHEMES = {
    SECURITY_SCHEME: {"type": "http", "scheme": "bearer",
                      "description": "An API key (`sluice_...`, from `python -m jobs.keys create`) or, when the server "
                                     "accepts them, a JWT of its identity provider. The credential names the "
                                     "caller's tenant and role; each operation's `x-required-role` is the least "
                                     "role that may call it."},
}
#: Paths open to anyone (no credential): a load balancer's and a probe's.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})

#: The applications of ``serve/config.yaml``: route prefix and module (its ``api`` and ``BODIES``). The uploads
#: application's routes are already the contract's absolute paths.
APPLICATIONS: tuple[tuple[str, str], ...] = (
    ("/v1/search", "serve.search.app"),
    ("", "serve.uploads.app"),
    ("/v1", "serve.documents.app"),
)

_WHY = {
    400: "The request is malformed (a bad path, part number or digest).",
    401: "No credential, or one that is malformed, unknown, expired or revoked.",
    403: "The credential's role may not make this call.",
    404: "No such object for this caller (another tenant's answers 404 too).",
    409: "The object's state does not allow the call.",
    413: "The body or the upload is larger than allowed.",
    422: "The body or a parameter is not valid; `detail` names the field.",
    429: "Past a limit (`limit` names it: `key_rps`, `tenant_rps`, `max_open_uploads`); retry after `Retry-After`.",
    502: "S3 stored different bytes than sent; send the part again.",
    503: "A service is unavailable or the search is overloaded; retry after `Retry-After` seconds.",
}


class ErrorBody(BaseModel):
    """Every error answer: a stable ``error`` code and a human-readable ``detail``, sometimes more fields
    (``missing_parts``, ``key``, ``status``)."""

    model_config = ConfigDict(extra="allow")

    error: str
    detail: str


def operation_id(prefix: str = "") -> Callable[[Any], str]:
    """The ``generate_unique_id_function=`` of an app: ``prefix`` + the route's function name (``search_batch``,
    ``upload_put_part``), names a generated client can use as its method names."""
    return lambda route: prefix + route.name


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route for these error statuses, each an :class:`ErrorBody`."""
    return {status: {"model": ErrorBody, "description": _WHY[status]} for status in statuses}


def json_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """The ``openapi_extra=`` of a route that reads a JSON body of ``model`` itself (see the module docstring)."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


def raw_body(media_type: str, description: str) -> dict[str, Any]:
    """The ``openapi_extra=`` of a route whose body is raw bytes (an upload part)."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}}


def describe(app: FastAPI, bodies: Sequence[type[BaseModel]] = ()) -> dict[str, Any]:
    """The OpenAPI document of ``app``: FastAPI's, plus the schemas of ``bodies`` and the security requirement.

    Paths are as the app routes them (relative to its route prefix); ``servers`` is the app's.
    """
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                         servers=app.servers or None)
    components = schema.setdefault("components", {})
    models = components.setdefault("schemas", {})
    for model in bodies:
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        models.update(found.pop("$defs", {}))
        models[model.__name__] = found
    components["securitySchemes"] = SECURITY_SCHEMES
    error = errors(422)[422]
    roles = _required_roles(app.routes)
    refused = {str(status): {"description": _WHY[status],
                             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
               for status in (401, 403, 429)}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if path not in OPEN_PATHS:
                operation["security"] = [{SECURITY_SCHEME: []}]
                for status, answer in refused.items():
                    operation.setdefault("responses", {}).setdefault(status, answer)
            if (path, method.upper()) in roles:
                operation["x-required-role"] = roles[path, method.upper()]
            if "422" in operation.get("responses", {}):  # FastAPI's default for routes with parameters
                operation["responses"]["422"] = {
                    "description": error["description"],
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                }
    for unused in ("HTTPValidationError", "ValidationError"):
        models.pop(unused, None)
    models.setdefault("ErrorBody", ErrorBody.model_json_schema())
    return schema


def _required_roles(routes: Sequence[Any], prefix: str = "") -> dict[tuple[str, str], str]:
    """``(path, METHOD)`` to the role its ``serve.auth.allow`` dependency asks for, routers included (Serve's
    ingress includes the deployment's routes as a router)."""
    roles = {}
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            roles |= _required_roles(included.routes, prefix + getattr(context, "prefix", ""))
            continue
        for dependency in getattr(getattr(route, "dependant", None), "dependencies", ()):
            role = getattr(dependency.call, "role", None)
            if role is not None:
                for method in route.methods:
                    roles[prefix + route.path_format, method] = role.value
    return roles


def install(app: FastAPI, bodies: Sequence[type[BaseModel]] = (),
            build: Callable[[], dict[str, Any]] | None = None) -> None:
    """Serve :func:`describe`'s document (or ``build()``'s) as ``app``'s ``openapi.json``, built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build() if build is not None else describe(app, bodies)
        return app.openapi_schema

    app.openapi = openapi


def merged() -> dict[str, Any]:
    """The whole API in one document: every application's paths under its route prefix, one set of components.

    Raises:
        ValueError: two applications declare the same path or two different schemas of one name.
    """
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for prefix, module_name in APPLICATIONS:
        module = importlib.import_module(module_name)
        app: FastAPI = module.api
        doc = describe(app, getattr(module, "BODIES", ()))
        doc.pop("servers", None)
        for path, operations in doc.get("paths", {}).items():
            full = (prefix + path).rstrip("/") or "/"
            if full in paths:
                raise ValueError(f"{full} is declared by two applications")
            paths[full] = operations
        for name, schema in doc.get("components", {}).get("schemas", {}).items():
            if schemas.setdefault(name, schema) != schema:
                raise ValueError(f"two different schemas are named {name}")
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sluice", "version": "1.0.0",
                 "description": "Uploads, documents and hybrid search of Sluice, in one document."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": SECURITY_SCHEMES},
    }
