"""``python -m jobs.migrate [--grant ROLE]``: apply the catalog's migrations as the schema's owner (README,
"Security", "Deployment").

Run it with ``SLUICE_MIGRATION_DSN`` (the owner's DSN; default ``SLUICE_POSTGRES_DSN``) before the services start
with ``SLUICE_MIGRATE_ON_START=false``: their role may then read and write the tables but not change them.
``--grant ROLE`` gives ``ROLE`` exactly that (``SELECT``, ``INSERT``, ``UPDATE``, ``DELETE`` on every table,
``USAGE``/``SELECT``/``UPDATE`` on every sequence, the same on what later migrations create, and nothing on the
schema itself). The last line of standard output is ``{"applied": [...], "granted": ROLE | null}``; exit status 2
when PostgreSQL cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys

from psycopg import sql

from core.catalog import Catalog
from core.settings import Settings
from jobs.cli import EXIT_INFRASTRUCTURE, configure_logging, run_job


def grant(catalog: Catalog, role: str) -> None:
    """Give ``role`` the rights the services need on the catalog's tables, and no right on its schema."""
    statements = [
        "GRANT USAGE ON SCHEMA public TO {role}",
        "REVOKE CREATE ON SCHEMA public FROM {role}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {role}",
    ]

    def run(conn) -> None:
        for statement in statements:
            conn.execute(sql.SQL(statement).format(role=sql.Identifier(role)))

    catalog._run(run)


def main(argv: list[str] | None = None) -> int:
    """Apply the migrations (and grant) as the module docstring says; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m jobs.migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--grant", metavar="ROLE", default=None,
                        help="the services' database role: may read and write every table, not change the schema")
    args = parser.parse_args(argv)
    configure_logging()
    settings = Settings()
    owner = settings.migration_dsn.get_secret_value() if settings.migration_dsn else settings.postgres_dsn
    catalog = Catalog(settings.model_copy(update={"postgres_dsn": owner, "migrate_on_start": True}), max_connections=1)

    def job() -> dict:
        catalog.check()  # opens the pool, which applies what is missing
        if args.grant:
            grant(catalog, args.grant)
        return {"applied": catalog.applied_migrations, "granted": args.grant}

    try:
        result = run_job("migrate", job)
    finally:
        catalog.close()
    if result is None:
        return EXIT_INFRASTRUCTURE
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
