"""Who is calling: the one authentication and authorization step of the three Serve applications (README, "Security").

Every ``/v1/...`` route but the health probes takes ``caller: Principal = Depends(allow(Role.X))``: the dependency
authenticates the request with the deployment's :class:`Authenticator` (``app.state.auth``, set by the deployment's
constructor) and checks the role.

* ``Authorization: Bearer sluice_...``: an API key of ``python -m jobs.keys`` (``core.api_keys``). Its record is
  cached for ``auth_cache_s`` (at most 10 s), so a revoked key is refused everywhere within that.
* ``Authorization: Bearer <JWT>`` (``SLUICE_AUTH_MODE=jwt`` or ``both``): verified by PyJWT against the JWKS of
  ``jwt_jwks`` (a file, re-read when it changes, or a URL, cached and refreshed by :class:`jwt.PyJWKClient`), with
  an asymmetric algorithm that matches the key, the issuer, the audience, ``exp`` required; tenant and role come from
  the claims ``jwt_tenant_claim`` and ``jwt_role_claim``.
* ``SLUICE_AUTH_MODE=trusted_header``: a gateway in front names the caller in ``X-User-ID`` (and ``X-User-Role``,
  default ``reader``) on requests that carry its shared secret in ``X-Sluice-Gateway-Secret``, each header once;
  API keys still work. Without the secret, ``X-User-ID`` is ignored, as in every other mode.

A missing, malformed, unknown, expired or revoked credential answers 401 ``unauthenticated`` with
``WWW-Authenticate: Bearer``; an authenticated caller without the role answers 403 ``forbidden``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import os
import threading
import time
from typing import Any

import jwt
from fastapi import Request

from core.access import Principal, Role, canonical_tenant
from core.api_keys import KEY_PREFIX, ApiKey, parse_key
from core.catalog import Catalog
from core.errors import ServiceUnavailableError
from core.quotas import RateLimiter
from core.settings import Settings
from serve.http import ApiError

logger = logging.getLogger(__name__)

GATEWAY_SECRET_HEADER = "X-Sluice-Gateway-Secret"
USER_HEADER = "X-User-ID"
ROLE_HEADER = "X-User-Role"
#: Most key records a replica caches (the oldest half is dropped past it).
MAX_CACHED_KEYS = 10_000
#: Seconds an unknown key id is remembered as unknown (a flood of made-up keys then costs no catalog query each).
UNKNOWN_KEY_CACHE_S = 2.0
#: Shortest gateway secret accepted.
MIN_GATEWAY_SECRET = 16
#: JWKS algorithms by key type: a token's ``alg`` must be of its key's type (no HS256 with an RSA key).
_ALGORITHMS_BY_KTY = {"RSA": {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"},
                      "EC": {"ES256", "ES384", "ES512", "ES256K"}, "OKP": {"EdDSA"}}


def unauthenticated(detail: str) -> ApiError:
    """401 ``unauthenticated`` with the ``WWW-Authenticate`` challenge of RFC 6750."""
    return ApiError(401, "unauthenticated", detail, headers={"WWW-Authenticate": 'Bearer realm="sluice"'})


def forbidden(detail: str) -> ApiError:
    """403 ``forbidden``."""
    return ApiError(403, "forbidden", detail)


@dataclasses.dataclass
class _CachedKey:
    record: ApiKey
    key_hash: str
    fetched_at: float


class _JwksFile:
    """A JWKS file, read again whenever its modification time changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mtime: float | None = None
        self._keys: jwt.PyJWKSet | None = None
        self._lock = threading.Lock()

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK:
        kid = jwt.get_unverified_header(token).get("kid")
        with self._lock:
            mtime = os.stat(self.path).st_mtime
            if self._keys is None or mtime != self._mtime:
                with open(self.path, encoding="utf-8") as f:
                    self._keys = jwt.PyJWKSet.from_json(f.read())
                self._mtime = mtime
            keys = self._keys.keys
        matching = [k for k in keys if kid is None or k.key_id == kid]
        if kid is None and len(keys) > 1:
            raise jwt.InvalidTokenError("the token names no key (kid) and the JWKS holds several")
        if not matching:
            raise jwt.InvalidTokenError(f"no key {kid!r} in the JWKS")
        return matching[0]


class Authenticator:
    """Turns a request's credential into a :class:`Principal` (module docstring).

    Args:
        settings: the ``auth_*``, ``jwt_*`` and ``gateway_secret`` settings.
        catalog: where the API keys are (a ``Catalog`` of ``settings`` when not given).

    Raises:
        ValueError: the settings of the chosen mode are incomplete (the message names the missing one).
    """

    def __init__(self, settings: Settings, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or Catalog(settings, max_connections=2)
        self.mode = settings.auth_mode
        self.keys_allowed = self.mode in ("api_key", "both", "trusted_header")
        self.jwt_allowed = self.mode in ("jwt", "both")
        self._keys: dict[str, _CachedKey] = {}
        self._unknown: dict[str, float] = {}  # key id -> until when it is known to be unknown (monotonic)
        self.limiter = RateLimiter(settings)
        self._jwks: Any = None
        if self.jwt_allowed:
            missing = [name for name in ("jwt_jwks", "jwt_issuer", "jwt_audience") if not getattr(settings, name)]
            if missing:
                raise ValueError(f"SLUICE_AUTH_MODE={self.mode} needs " + ", ".join(f"SLUICE_{m.upper()}" for m in missing))
            source = settings.jwt_jwks
            if source.startswith("http://"):
                raise ValueError("SLUICE_JWT_JWKS must be an https:// URL or a file: keys fetched over plain HTTP "
                                 "could be replaced on the way")
            self._jwks = (jwt.PyJWKClient(source, cache_keys=True, lifespan=300, timeout=10)
                          if source.startswith("https://") else _JwksFile(source))
            self.algorithms = {a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()}
            weak = {a for a in self.algorithms if a.lower() == "none" or a.upper().startswith("HS")}
            if weak:
                raise ValueError(f"SLUICE_JWT_ALGORITHMS may not include {', '.join(sorted(weak))}")
        self.gateway_secret = (settings.gateway_secret.get_secret_value().encode()
                               if settings.gateway_secret is not None else b"")
        if self.mode == "trusted_header" and len(self.gateway_secret) < MIN_GATEWAY_SECRET:
            raise ValueError(f"SLUICE_AUTH_MODE=trusted_header needs SLUICE_GATEWAY_SECRET of at least "
                             f"{MIN_GATEWAY_SECRET} characters")

    # -- the credential kinds ----------------------------------------------------------------------------------

    async def authenticate(self, request: Request) -> Principal:
        """The caller of ``request``.

        Raises:
            ApiError: 401 ``unauthenticated`` (the detail says what was wrong, never echoing the credential), 503
                when the catalog cannot be reached to check a key.
        """
        headers = request.headers
        if self.mode == "trusted_header" and GATEWAY_SECRET_HEADER in headers:
            return self._gateway(headers)
        authorization = headers.get("authorization")
        if not authorization:
            raise unauthenticated("send a credential: Authorization: Bearer <API key or token>")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise unauthenticated("only Bearer credentials are accepted: Authorization: Bearer <API key or token>")
        if credential.startswith(KEY_PREFIX):
            if not self.keys_allowed:
                raise unauthenticated(f"API keys are not accepted (SLUICE_AUTH_MODE={self.mode})")
            return await self._api_key(credential, request)
        if not self.jwt_allowed:
            raise unauthenticated("the credential is not an API key")
        return await asyncio.to_thread(self._jwt, credential)

    def _gateway(self, headers) -> Principal:
        # A header sent twice is refused, not read first-wins: a gateway that appends its own header after the
        # client's must not let the client's copy name the caller.
        for name in (GATEWAY_SECRET_HEADER, USER_HEADER, ROLE_HEADER):
            if len(headers.getlist(name)) > 1:
                raise unauthenticated(f"the {name} header appears more than once")
        if not hmac.compare_digest(headers.get(GATEWAY_SECRET_HEADER, "").encode(), self.gateway_secret):
            raise unauthenticated(f"the {GATEWAY_SECRET_HEADER} header is wrong")
        try:
            tenant = canonical_tenant(headers.get(USER_HEADER, ""))
            role = Role.parse(headers.get(ROLE_HEADER, Role.READER.value))
        except ValueError as exc:
            raise unauthenticated(f"the gateway's caller is not valid: {exc}") from None
        return Principal(tenant, role, f"gateway:{tenant}")

    async def _api_key(self, key: str, request: Request) -> Principal:
        key_id = parse_key(key)
        if key_id is None:
            raise unauthenticated("the API key is malformed")
        if self._unknown.get(key_id, 0.0) > time.monotonic():
            raise unauthenticated("the API key is not known")
        cached = self._keys.get(key_id)
        if cached is None or time.monotonic() - cached.fetched_at > self.settings.auth_cache_s:
            try:
                found = await asyncio.to_thread(self.catalog.api_key, key_id)
            except ServiceUnavailableError as exc:
                raise ApiError(503, "service_unavailable", f"{exc.service} is unavailable",
                               headers={"Retry-After": "1"}) from exc
            if found is None:
                self._keys.pop(key_id, None)
                if len(self._unknown) >= MAX_CACHED_KEYS:
                    self._unknown.clear()
                self._unknown[key_id] = time.monotonic() + UNKNOWN_KEY_CACHE_S
                raise unauthenticated("the API key is not known")
            if len(self._keys) >= MAX_CACHED_KEYS:
                for stale in list(self._keys)[: MAX_CACHED_KEYS // 2]:
                    self._keys.pop(stale, None)
            cached = self._keys[key_id] = _CachedKey(found[0], found[1], time.monotonic())
        # One HMAC is microseconds: only the first, which may read the secret from the catalog, leaves the loop.
        digest = (self.catalog.key_hash(key) if self.catalog.auth_secret_loaded
                  else await asyncio.to_thread(self.catalog.key_hash, key))
        if not hmac.compare_digest(digest, cached.key_hash):
            raise unauthenticated("the API key is not known")
        refusal = cached.record.refusal()
        if refusal:
            # The audit trail files the refusal under the key's tenant, where its admin can see it.
            request.state.claimed = (cached.record.tenant, f"key:{key_id}")
            raise unauthenticated(f"the API key is {refusal}")
        return Principal(cached.record.tenant, cached.record.role, f"key:{key_id}", key_id)

    def _jwt(self, token: str) -> Principal:
        s = self.settings
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            allowed = self.algorithms & _ALGORITHMS_BY_KTY.get(key.key_type, set())
            if key.algorithm_name and key.algorithm_name != "none":
                allowed &= {key.algorithm_name}
            if not allowed:
                raise jwt.InvalidTokenError("the JWKS key allows no accepted algorithm")
            claims = jwt.decode(token, key.key, algorithms=sorted(allowed), audience=s.jwt_audience,
                                issuer=s.jwt_issuer, leeway=s.jwt_leeway_s,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except (jwt.PyJWKClientConnectionError, OSError, ValueError) as exc:
            # Unreachable (a URL) or unreadable (a file being rotated): no token can be checked just now. A
            # ValueError here is a JWKS that is not JSON (PyJWT's own errors are handled below).
            if isinstance(exc, (jwt.InvalidTokenError, jwt.PyJWKError, jwt.PyJWKClientError)):
                raise unauthenticated(f"the token is not valid: {exc}") from None
            logger.error("the JWKS could not be read: %s", exc)
            raise ApiError(503, "service_unavailable", "the identity provider's keys are unavailable",
                           headers={"Retry-After": "5"}) from None
        except (jwt.InvalidTokenError, jwt.PyJWKClientError, jwt.PyJWKError) as exc:
            raise unauthenticated(f"the token is not valid: {exc}") from None
        try:
            tenant = canonical_tenant(claims.get(s.jwt_tenant_claim))
            role = Role.parse(claims.get(s.jwt_role_claim))
        except ValueError as exc:
            raise unauthenticated(f"the token's claims are not valid: {exc}") from None
        return Principal(tenant, role, f"jwt:{str(claims['sub'])[:200]}")


class allow:  # noqa: N801 (read as a function: ``Depends(allow(Role.WRITER))``)
    """The FastAPI dependency of a route that ``role`` (or a higher role) may call; calling it returns the caller.

    A class rather than a closure: Serve pickles the routes to its replicas, and a module-level class travels by
    reference (a closure's string annotations would lose their names on the way). The caller and the role are also
    kept in ``request.state``, where the request log and audit trail (``serve.http.RequestLog``) find them;
    ``serve.openapi`` reads ``role`` to document each route.

    Raises:
        ApiError: 401 (see :meth:`Authenticator.authenticate`), 429 ``rate_limited`` past the caller's key or
            tenant rate (``core.quotas``; ``Retry-After``), 403 ``forbidden`` below ``role``.
    """

    def __init__(self, role: Role) -> None:
        self.role = role

    async def __call__(self, request: Request) -> Principal:
        authenticator: Authenticator = request.app.state.auth
        request.state.needed_role = self.role
        principal = await authenticator.authenticate(request)
        request.state.principal = principal
        if authenticator.limiter.enabled:
            refusal = await asyncio.to_thread(authenticator.limiter.check, principal.tenant, principal.subject)
            if refusal is not None:
                raise ApiError(429, "rate_limited", f"more than {refusal.rps} requests per second for this "
                               f"{refusal.limit}; retry after {refusal.retry_after_s} s",
                               extra={"limit": f"{refusal.limit}_rps", "rps": refusal.rps},
                               headers={"Retry-After": str(refusal.retry_after_s)})
        if not principal.role.allows(self.role):
            raise forbidden(f"this call needs the {self.role.value} role; the caller has {principal.role.value}")
        return principal
