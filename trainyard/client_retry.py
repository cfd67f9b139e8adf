"""How the SDK retries a call that failed in transit: which failures, which calls, for how long."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_before_delay,
    wait_random_exponential,
)

log = logging.getLogger("trainyard.client")

# A proxy or the API itself saying "not now": the call may be sent again when it is safe to.
RETRY_STATUSES = frozenset({502, 503, 504})
# The request never reached the server: sending it again is safe for every call.
NOT_SENT_ERRORS: tuple[type[httpx.TransportError], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Mistakes on our side that no retry mends.
NEVER_RETRIED_ERRORS: tuple[type[httpx.TransportError], ...] = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by `total_s` from the first try (0: never retry).

    `sleep` is injectable so tests of the policy need not wait.
    """

    total_s: float = 60.0
    first_backoff_s: float = 0.25
    max_backoff_s: float = 5.0
    sleep: Callable[[float], None] = time.sleep

    def call(self, send: Callable[[], T], idempotent: bool, what: str, total_s: float | None = None) -> T:
        """`send()` until it succeeds or gives up; the last answer (or error) is what the caller gets.

        A transport error or a 502/503/504 answer is retried when the call is `idempotent`; a
        connection that could not be opened is retried for any call (the request never left).
        """
        retrying = Retrying(
            stop=stop_before_delay(self.total_s if total_s is None else total_s),
            wait=wait_random_exponential(multiplier=self.first_backoff_s, max=self.max_backoff_s),
            retry=retry_if_exception(lambda exc: retryable_error(exc, idempotent))
            | retry_if_result(lambda answer: idempotent and retryable_answer(answer)),
            before_sleep=lambda state: _log_retry(state, what),
            retry_error_callback=_last_outcome,
            sleep=self.sleep,
        )
        return retrying(send)


def retryable_error(exc: BaseException, idempotent: bool) -> bool:
    if isinstance(exc, NOT_SENT_ERRORS):
        return True
    return idempotent and isinstance(exc, httpx.TransportError) and not isinstance(exc, NEVER_RETRIED_ERRORS)


def retryable_answer(answer: object) -> bool:
    return isinstance(answer, httpx.Response) and answer.status_code in RETRY_STATUSES


def transient(exc: BaseException) -> bool:
    """A failure an idempotent call would have retried (used by loops that poll through outages)."""
    status = getattr(exc, "status", None)
    return retryable_error(exc, idempotent=True) or status in RETRY_STATUSES


def _last_outcome(state: RetryCallState) -> object:
    """Out of time: return the last answer (a 503 becomes the caller's error) or raise the last error."""
    assert state.outcome is not None
    return state.outcome.result()


def _log_retry(state: RetryCallState, what: str) -> None:
    assert state.outcome is not None
    if state.outcome.failed:
        exc = state.outcome.exception()
        reason = f"{type(exc).__name__}: {exc}"
    else:
        answer = state.outcome.result()
        reason = f"HTTP {answer.status_code}" if isinstance(answer, httpx.Response) else repr(answer)
    delay_s = state.next_action.sleep if state.next_action else 0.0
    log.warning("%s failed (%s), try %d; retrying in %.2f s", what, reason, state.attempt_number, delay_s)
