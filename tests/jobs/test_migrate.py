"""``python -m jobs.migrate`` as an operator runs it: the schema's owner applies the migrations and grants the
services' role what they need, and that role then works but cannot change the schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from core.catalog import Catalog
from core.errors import ConfigurationError
from core.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def database(postgres_dsn):
    """A new, empty database and a login role without rights: their DSNs (owner, services)."""
    name, role = f"mig_{uuid.uuid4().hex[:8]}", f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
    base = postgres_dsn.rsplit("/", 1)[0]
    owner, app = f"{base}/{name}", f"{base}/{name}".replace("postgres@", f"{role}@")
    yield owner, app, role
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
        conn.execute(f"DROP ROLE {role}")


def _migrate(owner: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SLUICE_MIGRATION_DSN=owner, SLUICE_POSTGRES_DSN="postgresql://nobody@127.0.0.1:1/none")
    return subprocess.run([sys.executable, "-m", "jobs.migrate", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_the_services_role_reads_and_writes_but_cannot_change_the_schema(database):
    owner, app, role = database
    services = Settings(postgres_dsn=app, migrate_on_start=False)
    with pytest.raises(ConfigurationError, match="jobs.migrate"):
        Catalog(services).check()  # nothing applied yet: the services refuse to start, naming the step

    done = _migrate(owner, "--grant", role)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["granted"] == role and "0001_init.sql" in result["applied"] and "0008_security.sql" in result["applied"]
    again = _migrate(owner)
    assert json.loads(again.stdout.splitlines()[-1])["applied"] == []

    catalog = Catalog(services)
    record, _ = catalog.create_api_key("acme", "reader")  # reads and writes, sequences included
    assert [k.key_id for k in catalog.list_api_keys("acme")] == [record.key_id]
    catalog.revoke_api_key(record.key_id)
    catalog.close()
    with psycopg.connect(app, autocommit=True) as conn:
        for change in ("CREATE TABLE intruder (a int)", "ALTER TABLE api_keys ADD COLUMN x int",
                       "DROP TABLE audit_events", "CREATE INDEX i ON api_keys (name)", "TRUNCATE api_keys"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(change)
