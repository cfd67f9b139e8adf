"""Retry rules: which rule matches an attempt's end, its own counter, and its backoff on a clock passed in."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from trainyard.scheduler import retries
from trainyard.spec import RetryRule

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)  # the fake clock: every decision is taken "now"


class _Top(random.Random):
    """Always draws the top of the range: the default backoff's ceiling, exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


def _rules(*rules: dict[str, object]) -> list[RetryRule]:
    return [RetryRule.model_validate(rule) for rule in rules]


def test_the_first_matching_rule_decides_by_exit_code_or_by_reason() -> None:
    rules = _rules(
        {"exit_codes": [137, 143], "max": 2},
        {"exit_codes": [137], "reasons": ["wall_clock"], "max": 5},
        {"reasons": ["prepare_failed", "mount_failed", "node_lost"]},
    )
    assert retries.first_matching_rule(rules, "exit", 137) == 0  # rule 1 matches too: the first wins
    assert retries.first_matching_rule(rules, "exit", 143) == 0
    assert retries.first_matching_rule(rules, "wall_clock", 137) == 1  # a wall-clock kill is its reason, not its code
    assert retries.first_matching_rule(rules, "mount_failed", 1) == 2
    assert retries.first_matching_rule(rules, "node_lost", None) == 2
    assert retries.first_matching_rule(rules, "exit", 1) is None
    assert retries.first_matching_rule(rules, "prepare_failed", 137) == 2  # codes match own exits only
    assert retries.first_matching_rule([], "exit", 137) is None


def test_a_rule_retries_with_its_own_counter_and_fixed_backoff_from_the_clock_given() -> None:
    rules = _rules({"exit_codes": [137], "max": 2, "backoff": "30s"})
    first = retries.decide(rules, {}, retries_used=0, max_retries=0, reason="exit", exit_code=137, now=NOW)
    assert first.retried and first.retried_by == "retry[0]"
    assert first.not_before == NOW + timedelta(seconds=30)
    assert first.counters == {"retries_by_rule": {"retry[0]": 1}}  # max_retries' counter is not touched
    waiting = "retry 1 of 2 by retry[0] after exit code 137; backoff until 03:04:35 UTC"
    assert first.pending_reason("exit", 137) == waiting
    later = NOW + timedelta(minutes=7)
    second = retries.decide(rules, {"retry[0]": 1}, 0, 0, "exit", 137, later)
    assert second.retried_by == "retry[0]" and second.not_before == later + timedelta(seconds=30)
    assert second.counters == {"retries_by_rule": {"retry[0]": 2}}
    spent = retries.decide(rules, {"retry[0]": 2}, 0, 0, "exit", 137, later)
    assert not spent.retried and spent.not_before is None and spent.counters == {}


def test_a_spent_rule_ends_the_job_even_when_max_retries_is_left() -> None:
    rules = _rules({"exit_codes": [3], "max": 1})
    decision = retries.decide(rules, {"retry[0]": 1}, 0, max_retries=5, reason="exit", exit_code=3, now=NOW)
    assert not decision.retried
    # Another code matches no rule: max_retries decides, with its exponential backoff.
    other = retries.decide(rules, {"retry[0]": 1}, 0, 5, "exit", 4, NOW, rng=_Top())
    assert other.retried_by == "max_retries" and other.counters == {"retries_used": 1}
    assert other.not_before == NOW + timedelta(seconds=retries.RETRY_BACKOFF_BASE_S)


def test_each_rule_counts_its_own_retries() -> None:
    rules = _rules(
        {"exit_codes": [137], "max": 1, "backoff": 0},
        {"reasons": ["wall_clock"], "max": 2, "backoff": "2m"},
    )
    used = {"retry[0]": 1}
    assert not retries.decide(rules, used, 0, 0, "exit", 137, NOW).retried
    by_wall_clock = retries.decide(rules, used, 0, 0, "wall_clock", 143, NOW)
    assert by_wall_clock.retried_by == "retry[1]" and by_wall_clock.not_before == NOW + timedelta(minutes=2)
    assert by_wall_clock.counters == {"retries_by_rule": {"retry[0]": 1, "retry[1]": 1}}


def test_a_rule_without_backoff_waits_the_exponential_backoff_of_its_own_count() -> None:
    rules = _rules({"exit_codes": [1], "max": 10})
    waits = [retries.decide(rules, {"retry[0]": n}, 0, 0, "exit", 1, NOW, rng=_Top()).not_before for n in range(4)]
    assert waits == [NOW + timedelta(seconds=retries.RETRY_BACKOFF_BASE_S * 2**n) for n in range(4)]


def test_zero_backoff_retries_at_the_next_pass() -> None:
    decision = retries.decide(_rules({"exit_codes": [1], "backoff": "0s"}), {}, 0, 0, "exit", 1, NOW)
    assert decision.not_before == NOW


def test_without_rules_max_retries_retries_own_failures_only() -> None:
    assert retries.decide([], {}, 0, 1, "exit", 2, NOW).retried_by == "max_retries"
    assert retries.decide([], {}, 0, 1, "prepare_failed", 1, NOW).retried_by == "max_retries"
    assert not retries.decide([], {}, 1, 1, "exit", 2, NOW).retried  # spent
    assert not retries.decide([], {}, 0, 0, "exit", 137, NOW).retried  # max_retries: 0
    assert not retries.decide([], {}, 0, 3, "wall_clock", 143, NOW).retried  # only a rule retries a wall-clock kill


def test_node_loss_is_decided_by_a_rule_only_when_one_names_it() -> None:
    assert retries.rule_decision([], {}, "node_lost", None, NOW) is None  # requeued, uncounted (SPEC §2.6)
    capped = _rules({"reasons": ["node_lost"], "max": 1, "backoff": 45})
    first = retries.rule_decision(capped, {}, "node_lost", None, NOW)
    assert first is not None and first.retried_by == "retry[0]" and first.not_before == NOW + timedelta(seconds=45)
    spent = retries.rule_decision(capped, {"retry[0]": 1}, "node_lost", None, NOW)
    assert spent is not None and not spent.retried


def test_stored_rules_read_back_as_the_spec_gave_them() -> None:
    rules = _rules({"exit_codes": [137, 143], "reasons": ["node_lost"], "max": 4, "backoff": "1m30s"})
    stored = [rule.model_dump(mode="json") for rule in rules]
    assert stored == [{"exit_codes": [137, 143], "reasons": ["node_lost"], "max": 4, "backoff": 90.0}]
    assert retries.parse_rules(stored) == rules
    assert retries.parse_rules(None) == []
