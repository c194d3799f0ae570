"""API keys in the catalog: making, finding, listing and revoking them (README, "Security").

A key reads ``sluice_<key_id>_<secret>``: ``key_id`` is 16 hex digits (the row's primary key, safe to log and show),
``secret`` 43 URL-safe characters (256 random bits). The catalog keeps only a keyed hash of the whole key,
HMAC-SHA256 under the auth secret: ``SLUICE_AUTH_SECRET`` when the operator sets it (then a copy of the database
alone cannot even be used to test guesses), else a random secret made once and kept in ``auth_secret``. Hashes are
compared in constant time (:func:`hmac.compare_digest`).

:class:`ApiKeys` is mixed into :class:`core.catalog.Catalog`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import re
import secrets

import psycopg

from core.access import Role, canonical_tenant

KEY_PREFIX = "sluice_"
_KEY = re.compile(r"sluice_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_COLUMNS = "key_id, tenant, role, name, created_at, expires_at, revoked_at"


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """One key's record (never its secret).

    Attributes:
        key_id: its public id. tenant, role: what it grants. name: the operator's label.
        created_at, expires_at, revoked_at: its life (``None``: never expires / not revoked).
    """

    key_id: str
    tenant: str
    role: Role
    name: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    def refusal(self, now: dt.datetime | None = None) -> str | None:
        """Why the key may not be used now (``"revoked"``, ``"expired"``), or ``None`` when it may."""
        now = now or dt.datetime.now(dt.timezone.utc)
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return None

    def to_json(self) -> dict:
        """The record as the CLI and ``GET /v1/keys`` show it."""
        return {
            "key_id": self.key_id, "tenant": self.tenant, "role": self.role.value, "name": self.name,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def parse_key(text: str) -> str | None:
    """The ``key_id`` of a string shaped like an API key, or ``None``."""
    match = _KEY.fullmatch(text)
    return match.group(1) if match else None


def _record(row: dict) -> ApiKey:
    return ApiKey(row["key_id"], row["tenant"], Role(row["role"]), row["name"], row["created_at"], row["expires_at"],
                  row["revoked_at"])


class ApiKeys:
    """The catalog methods on ``api_keys``, as methods of :class:`Catalog`.

    Uses the catalog's ``settings`` and ``_run(fn, *args)`` (one retried transaction).
    """

    _auth_secret: bytes | None = None

    def _secret(self) -> bytes:
        """The key of the keys' hash (module docstring), read once per process."""
        if self._auth_secret is None:
            configured = self.settings.auth_secret
            if configured is not None and configured.get_secret_value():
                self._auth_secret = configured.get_secret_value().encode()
            else:
                def read(conn: psycopg.Connection) -> bytes:
                    conn.execute("INSERT INTO auth_secret (id, secret) VALUES (1, %s) ON CONFLICT (id) DO NOTHING",
                                 (secrets.token_bytes(32),))
                    return bytes(conn.execute("SELECT secret FROM auth_secret WHERE id = 1").fetchone()["secret"])

                self._auth_secret = self._run(read)
        return self._auth_secret

    @property
    def auth_secret_loaded(self) -> bool:
        """Whether :meth:`key_hash` can run without a catalog query (the secret is read once per process)."""
        return self._auth_secret is not None

    def key_hash(self, key: str) -> str:
        """The keyed hash the catalog keeps of ``key`` (hex)."""
        return hmac.new(self._secret(), key.encode(), hashlib.sha256).hexdigest()

    def create_api_key(self, tenant: str, role: Role | str, *, name: str = "",
                       expires_at: dt.datetime | None = None) -> tuple[ApiKey, str]:
        """Make a key; return its record and the key itself (shown once: only its hash is kept).

        Raises:
            core.access.InvalidTenant: ``tenant`` is not canonical. ValueError: an unknown role, a name over 200
                characters, or an expiry in the past.
        """
        tenant = canonical_tenant(tenant)
        role = Role.parse(role)
        if len(name) > 200:
            raise ValueError("key names are at most 200 characters")
        if expires_at is not None and expires_at <= dt.datetime.now(dt.timezone.utc):
            raise ValueError("the expiry is in the past")
        key_id = secrets.token_hex(8)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        digest = self.key_hash(key)
        row = self._run(lambda conn: conn.execute(
            f"INSERT INTO api_keys (key_id, tenant, role, name, key_hash, expires_at) VALUES (%s, %s, %s, %s, %s, %s) "
            f"RETURNING {_COLUMNS}", (key_id, tenant, role.value, name, digest, expires_at),
        ).fetchone())
        return _record(row), key

    def api_key(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The record of ``key_id`` and its stored hash, or ``None`` when there is no such key."""
        row = self._run(lambda conn: conn.execute(
            f"SELECT {_COLUMNS}, key_hash FROM api_keys WHERE key_id = %s", (key_id,)).fetchone())
        return None if row is None else (_record(row), row["key_hash"])

    def list_api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of ``tenant`` when given), oldest first, revoked ones included."""
        rows = self._run(lambda conn: conn.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE (%s::text IS NULL OR tenant = %s) ORDER BY created_at, key_id",
            (tenant, tenant)).fetchall())
        return [_record(row) for row in rows]

    def revoke_api_key(self, key_id: str, *, tenant: str | None = None) -> ApiKey | None:
        """Revoke ``key_id`` (of ``tenant`` when given) now; a key already revoked keeps its first revocation time.

        Returns:
            The key's record, or ``None`` when there is no such key (in that tenant).
        """
        row = self._run(lambda conn: conn.execute(
            f"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) "
            f"WHERE key_id = %s AND (%s::text IS NULL OR tenant = %s) RETURNING {_COLUMNS}",
            (key_id, tenant, tenant)).fetchone())
        return None if row is None else _record(row)
