"""Whether an ended attempt is retried, by what, and when: the job's `retry:` rules first, then max_retries.

Pure functions of the job's rules and counters, the attempt's outcome and the clock and random
generator passed in, so that every rule is tested without a scheduler. The first rule that
matches an outcome decides alone: with its own `max` spent the job ends, max_retries is not asked.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from trainyard.spec import RetryRule

RETRY_BACKOFF_BASE_S = 1.0
RETRY_BACKOFF_MAX_S = 300.0
# What `retried_by` says for a retry that no rule matched and max_retries allowed.
MAX_RETRIES = "max_retries"
# Ends that max_retries retries: the job's own failure (a wall-clock kill ends it unless a rule says).
DEFAULT_RETRY_REASONS = frozenset({"exit", "prepare_failed", "mount_failed"})
_RNG = random.Random()


def retry_delay_s(retry_number: int, rng: random.Random | None = None) -> float:
    """Exponential backoff, jittered over its upper half: a job that keeps failing yields to the others.

    The ceiling doubles per retry up to RETRY_BACKOFF_MAX_S; the jitter spreads jobs that failed
    together. `rng` is for tests (the module's generator otherwise).
    """
    ceiling = min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_BASE_S * (2 ** max(0, retry_number - 1)))
    return (rng or _RNG).uniform(ceiling / 2, ceiling)


def rule_label(index: int) -> str:
    """How a rule is named in `retried_by`, `retries_by_rule` and refusals: its place in the spec."""
    return f"retry[{index}]"


@dataclass(frozen=True)
class RetryDecision:
    """`retried_by`: the rule ("retry[0]") or "max_retries" that queues the job again; None: it ends.

    `counters` are the job columns to write with it (`retries_by_rule` or `retries_used`).
    """

    retried_by: str | None
    not_before: datetime | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    number: int = 0  # this retry's number by what retries it, out of `limit`
    limit: int = 0

    @property
    def retried(self) -> bool:
        return self.retried_by is not None

    def pending_reason(self, reason: str, exit_code: int | None) -> str:
        """What a queued job waiting out its backoff says (the scheduler's pass replaces it later)."""
        ended = f"exit code {exit_code}" if reason == "exit" else reason
        until = self.not_before.strftime("%H:%M:%S UTC") if self.not_before is not None else "now"
        return f"retry {self.number} of {self.limit} by {self.retried_by} after {ended}; backoff until {until}"


def first_matching_rule(rules: Sequence[RetryRule], reason: str, exit_code: int | None) -> int | None:
    """Index of the first rule that matches an attempt which ended for `reason` with `exit_code`."""
    return next((index for index, rule in enumerate(rules) if rule.matches(reason, exit_code)), None)


def parse_rules(stored: Sequence[Mapping[str, Any]] | None) -> list[RetryRule]:
    """The rules as a job row keeps them (validated at submit) back as models."""
    return [RetryRule.model_validate(rule) for rule in stored or ()]


def rule_decision(
    rules: Sequence[RetryRule],
    used_by_rule: Mapping[str, int],
    reason: str,
    exit_code: int | None,
    now: datetime,
    rng: random.Random | None = None,
) -> RetryDecision | None:
    """What the first matching rule decides; None when no rule matches (max_retries decides then)."""
    index = first_matching_rule(rules, reason, exit_code)
    if index is None:
        return None
    rule, label = rules[index], rule_label(index)
    used = int(used_by_rule.get(label, 0))
    if used >= rule.max:
        return RetryDecision(retried_by=None)
    delay_s = rule.backoff if rule.backoff is not None else retry_delay_s(used + 1, rng)
    return RetryDecision(
        retried_by=label,
        not_before=now + timedelta(seconds=delay_s),
        counters={"retries_by_rule": {**used_by_rule, label: used + 1}},
        number=used + 1,
        limit=rule.max,
    )


def default_decision(
    retries_used: int,
    max_retries: int,
    reason: str,
    now: datetime,
    rng: random.Random | None = None,
) -> RetryDecision:
    """max_retries: the job's own failures are retried with exponential backoff until it is spent."""
    if reason not in DEFAULT_RETRY_REASONS or retries_used >= max_retries:
        return RetryDecision(retried_by=None)
    delay_s = retry_delay_s(retries_used + 1, rng)
    return RetryDecision(
        retried_by=MAX_RETRIES,
        not_before=now + timedelta(seconds=delay_s),
        counters={"retries_used": retries_used + 1},
        number=retries_used + 1,
        limit=max_retries,
    )


def decide(
    rules: Sequence[RetryRule],
    used_by_rule: Mapping[str, int],
    retries_used: int,
    max_retries: int,
    reason: str,
    exit_code: int | None,
    now: datetime,
    rng: random.Random | None = None,
) -> RetryDecision:
    """The decision for an attempt that failed (not a success, cancel, or scheduler-side requeue)."""
    ruled = rule_decision(rules, used_by_rule, reason, exit_code, now, rng)
    if ruled is not None:
        return ruled
    return default_decision(retries_used, max_retries, reason, now, rng)
