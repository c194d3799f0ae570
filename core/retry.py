"""Retry policies for transient errors of external services.

Only errors from an explicit list are retried, a bounded number of times, with exponential backoff and jitter
(tenacity's ``wait_random_exponential``: the "Full Jitter" scheme of the AWS Architecture Blog, "Exponential Backoff
And Jitter", 2015). A call that still fails raises ``ServiceUnavailableError`` naming the service.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from core.errors import ServiceUnavailableError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Attempts per call, the first included.
DEFAULT_ATTEMPTS = 4
#: Upper bound of one backoff sleep, seconds.
DEFAULT_MAX_WAIT_S = 4.0


def call_with_retry(
    service: str,
    fn: Callable[..., T],
    *args: Any,
    transient: tuple[type[BaseException], ...],
    attempts: int = DEFAULT_ATTEMPTS,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
    **kwargs: Any,
) -> T:
    """Call ``fn(*args, **kwargs)``, retrying the ``transient`` exception types only.

    Args:
        service: the name reported in the error (``"s3"``, ``"postgres"``, ...).
        fn: the call to make; it must be idempotent.
        transient: exception types worth retrying (connection refused, timeouts); anything else propagates at once.
        attempts: total attempts, at least 1.
        max_wait_s: the longest backoff sleep, seconds.

    Returns:
        What ``fn`` returned.

    Raises:
        ServiceUnavailableError: when every attempt failed with a transient error.
    """
    retrying = Retrying(
        retry=retry_if_exception_type(transient),
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_random_exponential(multiplier=0.25, max=max_wait_s),
        reraise=False,
        before_sleep=lambda state: logger.warning(
            "%s call %s failed (attempt %d): %s",
            service,
            getattr(fn, "__name__", fn),
            state.attempt_number,
            state.outcome.exception() if state.outcome else "",
        ),
    )
    try:
        return retrying(fn, *args, **kwargs)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise ServiceUnavailableError(service, f"{type(last).__name__}: {last}") from last


def retried(service: str, transient: tuple[type[BaseException], ...]) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator form of :func:`call_with_retry` with the default attempts and backoff."""

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            return call_with_retry(service, fn, *args, transient=transient, **kwargs)

        return wrapper

    return decorate
