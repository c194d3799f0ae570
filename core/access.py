"""Who may do what: canonical tenant names, the three roles, and the authenticated caller (README, "Security").

* A **tenant** is a canonical name (:func:`canonical_tenant`): lowercase ASCII letters, digits, ``.``, ``_`` and
  ``-``, at most 63 characters, starting with a letter or a digit, without ``..``, and not a name the product
  reserves. Only canonical names are given to keys, so no other spelling can reach an object key
  (``<tenant>/<path>``), a document id or a payload.
* A **role** (:class:`Role`) is one of ``reader`` < ``writer`` < ``admin``; each includes the ones below it.
* A :class:`Principal` is the caller of one request: its tenant, its role, and who vouched for it.
"""

from __future__ import annotations

import dataclasses
import enum
import re

#: What a canonical tenant name looks like (before the ``..`` and reserved-name checks).
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
#: Names the product keeps for itself (its own S3 prefixes and accounts), never a tenant's.
RESERVED_TENANTS = frozenset({"sluice", "system", "internal", "admin", "root"})


class InvalidTenant(ValueError):
    """A tenant name that is not canonical; the message says which rule it breaks."""


def canonical_tenant(name: object) -> str:
    """``name`` if it is a canonical tenant name (module docstring).

    Nothing is normalised: another Unicode form, upper case or surrounding spaces are refused, not converted, so
    one tenant has exactly one spelling.

    Raises:
        InvalidTenant: the name breaks a rule (the message names the rule).
    """
    if not isinstance(name, str) or not name:
        raise InvalidTenant("a tenant name is required")
    if len(name) > 63:
        raise InvalidTenant(f"tenant names are at most 63 characters ({len(name)} given)")
    if not TENANT_PATTERN.fullmatch(name):
        raise InvalidTenant(
            f"tenant {name!r} is not canonical: use lowercase letters, digits, '.', '_' and '-', "
            "starting with a letter or a digit"
        )
    if ".." in name:
        raise InvalidTenant(f"tenant {name!r} contains '..'")
    if name in RESERVED_TENANTS:
        raise InvalidTenant(f"tenant {name!r} is reserved")
    return name


class Role(str, enum.Enum):
    """A caller's rights in its tenant; each role includes those of the roles below it."""

    READER = "reader"
    WRITER = "writer"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: "Role") -> bool:
        """Whether this role may do what ``needed`` may."""
        return self.rank >= needed.rank

    @classmethod
    def parse(cls, value: object) -> "Role":
        """The role named ``value``.

        Raises:
            ValueError: not one of ``reader``, ``writer``, ``admin``.
        """
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"role {value!r} is not one of reader, writer, admin") from None


_RANK = {Role.READER: 0, Role.WRITER: 1, Role.ADMIN: 2}


@dataclasses.dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request.

    Attributes:
        tenant: its canonical tenant. role: its role there.
        subject: who it is, for the audit log: ``key:<key_id>``, ``jwt:<sub>`` or ``gateway:<user>``.
        key_id: the API key's id (``None`` for a token or the gateway).
    """

    tenant: str
    role: Role
    subject: str
    key_id: str | None = None
