"""``python -m jobs.keys``: make, list and revoke API keys (README, "Security").

* ``create --tenant T --role reader|writer|admin [--expires-days N] [--name S]``: the last line of standard output
  is one JSON object: ``key_id``, ``key`` (shown this once: the catalog keeps only its keyed hash), ``tenant``,
  ``role``, ``name``, ``created_at``, ``expires_at``.
* ``list [--tenant T]``: one JSON object per line per key, oldest first, revoked ones included (never a secret);
  the last line is ``{"keys": N}``.
* ``revoke KEY_ID``: every Serve replica refuses the key within ``auth_cache_s`` (5 s); the last line is the key's
  record, with ``revoked_at``.

Exit status 0; 1 when the arguments are wrong (a tenant that is not canonical, an unknown role or key: the message
says which); 2 when PostgreSQL cannot be reached.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from core.access import InvalidTenant, canonical_tenant
from core.catalog import Catalog
from core.settings import Settings
from jobs.cli import EXIT_INFRASTRUCTURE, configure_logging, run_job

EXIT_BAD_ARGUMENTS = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.keys", description="Make, list and revoke API keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key; prints it once")
    create.add_argument("--tenant", required=True, help="the key's tenant (a canonical name)")
    create.add_argument("--role", required=True, choices=["reader", "writer", "admin"])
    create.add_argument("--expires-days", type=float, default=None, help="days until the key expires (default: never)")
    create.add_argument("--name", default="", help="a label for the key (who or what uses it)")
    listing = commands.add_parser("list", help="the keys, oldest first")
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")
    revoke = commands.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    return parser


def _refuse(message: str) -> int:
    print(f"keys: {message}", file=sys.stderr)
    print(json.dumps({"error": "invalid_arguments", "detail": message}), flush=True)
    return EXIT_BAD_ARGUMENTS


def main(argv: list[str] | None = None) -> int:
    """Run one command (module docstring); return the exit status."""
    args = _parser().parse_args(argv)
    configure_logging()
    if args.command == "create":
        try:
            tenant = canonical_tenant(args.tenant)
        except InvalidTenant as exc:
            return _refuse(str(exc))
        if args.expires_days is not None and not 1 / 1440 <= args.expires_days <= 36500:
            return _refuse("--expires-days must be at least 1/1440 (one minute) and at most 36500")
        expires = (None if args.expires_days is None
                   else dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=args.expires_days))
        if len(args.name) > 200:
            return _refuse("--name is at most 200 characters")
    catalog = Catalog(Settings(), max_connections=1)

    def job() -> int:
        if args.command == "create":
            record, key = catalog.create_api_key(tenant, args.role, name=args.name, expires_at=expires)
            print(json.dumps(record.to_json() | {"key": key}), flush=True)
        elif args.command == "list":
            keys = catalog.list_api_keys(args.tenant)
            for record in keys:
                print(json.dumps(record.to_json()))
            print(json.dumps({"keys": len(keys)}), flush=True)
        else:
            record = catalog.revoke_api_key(args.key_id)
            if record is None:
                return _refuse(f"no key {args.key_id!r}")
            print(json.dumps(record.to_json()), flush=True)
        return 0

    try:
        status = run_job("keys", job)
    finally:
        catalog.close()
    return EXIT_INFRASTRUCTURE if status is None else status


if __name__ == "__main__":
    sys.exit(main())
