"""What every job entrypoint shares: its log format, and how a failure of the infrastructure ends it.

A job's last line of standard output is one JSON object (docs/DESIGN.md, "Interfaces (contract)"): its result, or, when a
service could not be reached or the configuration is wrong, ``{"error": "service_unavailable", "service", "detail"}``
or ``{"error": "configuration", "detail"}`` with exit status :data:`EXIT_INFRASTRUCTURE`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from typing import TypeVar

from core.errors import ConfigurationError, ServiceUnavailableError

#: Exit status when the infrastructure failed (a service unreachable, or the configuration wrong).
EXIT_INFRASTRUCTURE = 2

T = TypeVar("T")


def configure_logging() -> None:
    """Log INFO and above to standard error (standard output carries the JSON result)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def run_job(
    name: str,
    job: Callable[[], T],
    *,
    configuration_errors: tuple[type[BaseException], ...] = (ConfigurationError,),
    unavailable: Mapping[type[BaseException], str] | None = None,
) -> T | None:
    """Run ``job``; on an infrastructure failure print why (standard error, and the JSON line) and return ``None``.

    Args:
        name: the job's name, for the message (``ingest failed: ...``).
        job: the work; its return value is passed through.
        configuration_errors: exceptions that mean the configuration or the arguments are wrong.
        unavailable: other exception types that mean a service is unreachable, mapped to the service's name.

    Returns:
        What ``job`` returned, or ``None`` when it failed as above (the caller exits with
        :data:`EXIT_INFRASTRUCTURE`). Any other exception propagates.
    """
    extra = tuple(unavailable or ())
    try:
        return job()
    except ServiceUnavailableError as exc:
        service, detail = exc.service, exc.detail
    except configuration_errors as exc:
        print(f"{name} failed: {exc}", file=sys.stderr)
        print(json.dumps({"error": "configuration", "detail": str(exc)}), flush=True)
        return None
    except extra as exc:
        service = next(s for kind, s in unavailable.items() if isinstance(exc, kind))
        detail = str(exc)
    print(f"{name} failed: {service} is unreachable: {detail}", file=sys.stderr)
    print(json.dumps({"error": "service_unavailable", "service": service, "detail": detail}), flush=True)
    return None


def finish(result: object | None) -> int:
    """The end of a job's ``main``: its result as the last JSON line and exit 0, or (``None``, the job failed as
    :func:`run_job` says) :data:`EXIT_INFRASTRUCTURE`."""
    if result is None:
        return EXIT_INFRASTRUCTURE
    print(json.dumps(result), flush=True)
    return 0
