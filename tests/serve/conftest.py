"""Fixtures of the upload tests (``test_uploads``, ``test_client``): their settings, S3 bucket and a fresh tenant.

A test module that defines a fixture of the same name uses its own.
"""

from __future__ import annotations

import pytest

from core.objects import ObjectStore
from tests.serve.upload_helpers import PART, new_tenant


@pytest.fixture(scope="module")
def upload_settings(make_settings):
    """The session's settings with ``upload_part_size`` = 5 MiB (S3's smallest part), one per test module."""
    return make_settings(upload_part_size=PART)


@pytest.fixture(scope="module")
def objects(upload_settings) -> ObjectStore:
    """The object store of ``upload_settings``, its bucket created."""
    store = ObjectStore(upload_settings)
    store.ensure_bucket()
    return store


@pytest.fixture
def tenant() -> str:
    """A new tenant id for each test."""
    return new_tenant()
