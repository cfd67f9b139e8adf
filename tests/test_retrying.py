"""Retry policies: which errors are retried, the backoff between attempts, and where they stop."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from trainyard import retrying
from trainyard.storage_adapters import ObjectNotFound, StorageError
from trainyard.workers.transfer import TransferFailed


class FakeTime:
    def __init__(self) -> None:
        self.now_s = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds

    def clock(self) -> float:
        return self.now_s


def failing(times: int, error: Callable[[], BaseException], result: str = "done") -> Callable[[], str]:
    calls = {"n": 0}

    def action() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error()
        return result

    return action


def test_until_deadline_backs_off_doubling_up_to_its_cap_then_succeeds() -> None:
    fake = FakeTime()
    policy = retrying.until_deadline("upload k", 1000.0, lambda e: isinstance(e, StorageError), give_up=RuntimeError,
                                     clock=fake.clock, sleep=fake.sleep)  # fmt: skip
    assert policy(failing(7, lambda: StorageError("down"))) == "done"
    assert fake.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_until_deadline_gives_up_before_an_attempt_past_the_deadline() -> None:
    fake = FakeTime()
    policy = retrying.until_deadline("upload k", 3.0, lambda e: isinstance(e, StorageError),
                                     give_up=lambda e: TransferFailed(f"upload k: {e}"), clock=fake.clock,
                                     sleep=fake.sleep)  # fmt: skip
    with pytest.raises(TransferFailed, match="upload k: down") as caught:
        policy(failing(100, lambda: StorageError("down")))
    assert fake.sleeps == [0.5, 1.0]  # 1.5 s in, the next 2 s sleep would end past 3 s
    assert isinstance(caught.value.__cause__, StorageError)


def test_until_deadline_lets_other_errors_through_at_once() -> None:
    fake = FakeTime()
    policy = retrying.until_deadline("get k", 100.0, lambda e: isinstance(e, StorageError)
                                     and not isinstance(e, ObjectNotFound), give_up=RuntimeError,
                                     clock=fake.clock, sleep=fake.sleep)  # fmt: skip
    with pytest.raises(ObjectNotFound):
        policy(failing(1, lambda: ObjectNotFound("k")))
    with pytest.raises(ValueError):
        policy(failing(1, lambda: ValueError("bug")))
    assert fake.sleeps == []


def test_forever_retries_its_errors_without_a_limit() -> None:
    fake = FakeTime()
    policy = retrying.forever("publish", ConnectionError, sleep=fake.sleep)
    assert policy(failing(12, ConnectionError)) == "done"
    assert fake.sleeps[:4] == [0.1, 0.2, 0.4, 0.8] and fake.sleeps[-1] == 5.0 and len(fake.sleeps) == 12
    with pytest.raises(KeyError):
        policy(failing(1, KeyError))


def test_once_more_runs_a_lost_race_again_then_lets_the_error_through() -> None:
    assert retrying.once_more(LookupError)(failing(1, LookupError)) == "done"
    with pytest.raises(LookupError):
        retrying.once_more(LookupError)(failing(2, LookupError))
    with pytest.raises(ValueError):
        retrying.once_more(LookupError)(failing(1, ValueError))
