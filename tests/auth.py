"""Credentials for tests: API keys made in the session's PostgreSQL, as ``python -m jobs.keys create`` makes them.

The ``postgres_dsn`` fixture (``tests/conftest.py``) calls :func:`use_postgres`; :func:`bearer` then gives the
``Authorization`` header of a key of any tenant and role, made once per session and cached.
"""

from __future__ import annotations

import functools

_DSN: list[str] = []


def use_postgres(dsn: str) -> None:
    """Make keys in the catalog at ``dsn`` (the session's server)."""
    _DSN[:] = [dsn]
    make_key.cache_clear()


@functools.cache
def _catalog():
    from core.catalog import Catalog
    from core.settings import Settings

    if not _DSN:
        raise RuntimeError("no PostgreSQL for keys: use the postgres_dsn fixture first")
    return Catalog(Settings(postgres_dsn=_DSN[0]), max_connections=1)


@functools.cache
def make_key(tenant: str, role: str = "admin") -> str:
    """A valid API key of ``tenant`` with ``role`` (one per tenant and role in a session)."""
    _record, key = _catalog().create_api_key(tenant, role, name="tests")
    return key


def bearer(tenant: str, role: str = "admin") -> dict[str, str]:
    """The ``Authorization`` header of :func:`make_key` ``(tenant, role)``."""
    return {"Authorization": f"Bearer {make_key(tenant, role)}"}
