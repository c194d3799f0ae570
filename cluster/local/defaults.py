"""Fixed settings of the local stack: where it lives, the loopback address, and the default names and keys.

This module imports only the standard library and nothing else of this package.
"""

from __future__ import annotations

from pathlib import Path


#: Repository root (this file is ``cluster/local/defaults.py``).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Default folder of the local stack's state, data and logs.
DEFAULT_STATE_DIR = REPO_ROOT / ".sluice"
#: Serve configuration deployed by ``up`` (written by the Serve application's authors).
DEFAULT_SERVE_CONFIG = REPO_ROOT / "serve" / "config.yaml"

LOOPBACK = "127.0.0.1"
DEFAULT_ACCESS_KEY = "sluice"
DEFAULT_SECRET_KEY = "sluice-secret"
DEFAULT_BUCKET = "sluice"
DEFAULT_DATABASE = "sluice"
DEFAULT_REGION = "us-east-1"
