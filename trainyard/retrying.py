"""Retry policies, named, on tenacity: which errors are retried, for how long, with what backoff.

Three shapes cover trainyard's loops:

- `until_deadline`: a dependency that is down (the blob store during a transfer) is retried with
  exponential backoff until a deadline; the attempt that would start past it is not made.
- `forever`: events that must not be lost (the node's outbox while Redis is away) are retried
  with exponential backoff for as long as it takes.
- `once_more`: a write that lost a race (a concurrent insert took the same idempotency key) is
  run once more at once, where it finds the winner's row; a second loss propagates.

Backoffs are deterministic doubling from `first_s` up to `max_s` (the delays the hand-written
loops had); the clock and the sleep are injectable so that tests need not wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential,
    wait_none,
)
from tenacity.stop import stop_base

log = logging.getLogger(__name__)

ErrorTypes = type[BaseException] | tuple[type[BaseException], ...]


@dataclass(frozen=True)
class Backoff:
    """Sleeps of first_s, 2·first_s, 4·first_s, … each at most max_s."""

    first_s: float
    max_s: float

    def wait(self) -> wait_exponential:
        return wait_exponential(multiplier=self.first_s, min=self.first_s, max=self.max_s)


# A blob store that is down, during a node's transfer (staging, outputs, checkpoints).
STORE_BACKOFF = Backoff(first_s=0.5, max_s=10.0)
# Redis away, for the node's outbox of events: short first, the events are waited for.
EVENTS_BACKOFF = Backoff(first_s=0.1, max_s=5.0)


class _stop_before_deadline(stop_base):
    """Stop when the sleep before the next attempt would end past `deadline` (on `clock`)."""

    def __init__(self, deadline: float, clock: Callable[[], float]):
        self.deadline, self.clock = deadline, clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() + retry_state.upcoming_sleep > self.deadline


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        log.warning("%s failed, retrying in %.1f s: %s", what, retry_state.upcoming_sleep, exc)

    return before_sleep


def until_deadline(
    what: str,
    deadline: float,
    retried: Callable[[BaseException], bool],
    give_up: Callable[[BaseException], BaseException],
    backoff: Backoff = STORE_BACKOFF,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Retrying:
    """Retry errors for which `retried` holds, with `backoff`, until `deadline` (a `clock` time).

    Any other error propagates at once. When the next attempt would start past the deadline,
    `give_up(last error)` is raised, chained to that error.
    """

    def raise_give_up(retry_state: RetryCallState) -> None:
        assert retry_state.outcome is not None
        error = retry_state.outcome.exception()
        assert error is not None
        raise give_up(error) from error

    return Retrying(retry=retry_if_exception(retried), wait=backoff.wait(), sleep=sleep,
                    stop=_stop_before_deadline(deadline, clock), before_sleep=_log_retry(what),
                    retry_error_callback=raise_give_up)  # fmt: skip


def forever(
    what: str, errors: ErrorTypes, backoff: Backoff = EVENTS_BACKOFF, sleep: Callable[[float], None] = time.sleep
) -> Retrying:
    """Retry `errors` with `backoff` for as long as it takes; any other error propagates at once."""
    return Retrying(retry=retry_if_exception_type(errors), wait=backoff.wait(), stop=stop_never, sleep=sleep,
                    before_sleep=_log_retry(what))  # fmt: skip


def once_more(errors: ErrorTypes) -> Retrying:
    """Run once more, at once, after one of `errors`; the second run's error propagates as it is."""
    return Retrying(retry=retry_if_exception_type(errors), wait=wait_none(), stop=stop_after_attempt(2),
                    reraise=True)  # fmt: skip
