"""The one backoff policy's arithmetic, and the two places that spend it by count: the error
queue's retry schedule and a sink's bounded retries inside a batch. Unit tests: no server,
no sleeping (a sink's waits are recorded by a fake clock instead of slept)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from changefeed.backoff import DEPENDENCY_BACKOFF, Backoff
from changefeed.errors import RetryPolicy
from changefeed.processors.backoff import SINK_BACKOFF, SinkRetrier, SinkUnavailableError
from changefeed.testing.clock import FakeClock


def test_delay_doubles_from_the_base_and_stops_at_the_cap() -> None:
    backoff = Backoff(base=0.5, factor=2.0, cap=3.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_attempts_before_the_first_count_as_the_first() -> None:
    backoff = Backoff(base=2.0, factor=3.0, cap=100.0)
    assert backoff.delay(0) == backoff.delay(-5) == backoff.delay(1) == 2.0


def test_attempts_far_past_the_cap_give_the_cap_without_overflow() -> None:
    backoff = Backoff(base=1.0, factor=10.0, cap=60.0)
    assert backoff.delay(66) == backoff.delay(10**9) == 60.0


def test_factor_one_is_a_constant_wait_and_base_zero_no_wait() -> None:
    assert {Backoff(base=0.25, factor=1.0).delay(n) for n in range(1, 50)} == {0.25}
    assert {Backoff(base=0.0).delay(n) for n in range(1, 50)} == {0.0}


def test_delays_are_floats_even_for_whole_numbers() -> None:
    delay = Backoff(base=1, factor=2, cap=60).delay(3)
    assert isinstance(delay, float)
    assert delay == 4.0


@pytest.mark.parametrize(
    ("retries", "exhausted_from"),
    [(0, 1), (1, 2), (3, 4)],
)
def test_retries_bound_the_attempts(retries: int, exhausted_from: int) -> None:
    backoff = Backoff(retries=retries)
    assert [backoff.exhausted(n) for n in range(1, exhausted_from)] == [False] * (
        exhausted_from - 1
    )
    assert backoff.exhausted(exhausted_from)
    assert backoff.exhausted(exhausted_from + 10)


def test_unbounded_retries_are_never_exhausted() -> None:
    assert not any(Backoff(retries=None).exhausted(n) for n in (1, 100, 10**9))


@pytest.mark.parametrize(
    "options",
    [{"base": -1.0}, {"cap": -0.1}, {"factor": 0.5}, {"retries": -1}],
    ids=["negative base", "negative cap", "shrinking factor", "negative retries"],
)
def test_nonsense_is_refused_when_made(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**options)  # type: ignore[arg-type]


def test_a_pillow_waits_a_second_then_doubles_up_to_a_minute() -> None:
    assert [DEPENDENCY_BACKOFF.delay(n) for n in (1, 2, 3, 6, 7, 20)] == [
        1.0,
        2.0,
        4.0,
        32.0,
        60.0,
        60.0,
    ]
    assert not DEPENDENCY_BACKOFF.exhausted(10**6)


def test_the_error_queue_schedule_is_the_same_arithmetic_in_its_own_words() -> None:
    policy = RetryPolicy(base_delay=10, factor=3, max_delay=200, max_attempts=4)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [10.0, 30.0, 90.0, 200.0]
    assert policy.backoff == Backoff(base=10, factor=3, cap=200, retries=3)


def test_an_error_queue_that_never_retries_has_no_retries_left() -> None:
    assert RetryPolicy(max_attempts=0).backoff.retries == 0
    assert RetryPolicy(max_attempts=1).backoff.exhausted(1)


def test_a_sink_retries_transient_errors_with_the_backoff_then_gives_up() -> None:
    clock = FakeClock()
    retrier = SinkRetrier("search", Backoff(base=0.5, factor=2.0, cap=1.5, retries=3), clock)
    calls: list[int] = []

    def refused() -> None:
        calls.append(1)
        raise ConnectionError("refused")

    with pytest.raises(SinkUnavailableError, match="search unavailable after 4 attempts"):
        retrier.call(refused, lambda exc: isinstance(exc, ConnectionError))
    assert len(calls) == 4  # the first try and three retries
    assert clock.sleeps == [0.5, 1.0, 1.5]


def test_a_sink_that_recovers_returns_the_result_after_the_waits_so_far() -> None:
    clock = FakeClock()
    retrier = SinkRetrier("cache", Backoff(base=0.1, retries=5), clock)
    answers: Iterator[Exception | str] = iter([TimeoutError("slow"), TimeoutError("slow"), "ok"])

    def flaky() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert retrier.call(flaky, lambda exc: isinstance(exc, TimeoutError)) == "ok"
    assert clock.sleeps == [0.1, 0.2]


def test_a_sink_raises_errors_that_are_not_transient_at_once() -> None:
    clock = FakeClock()
    retrier = SinkRetrier("cache", Backoff(retries=5), clock)

    def wrong() -> None:
        raise KeyError("bad request")

    with pytest.raises(KeyError):
        retrier.call(wrong, lambda exc: isinstance(exc, ConnectionError))
    assert clock.sleeps == []


def test_after_giving_up_a_sink_fails_fast_until_the_next_batch() -> None:
    clock = FakeClock()
    retrier = SinkRetrier("search", Backoff(base=1.0, retries=1), clock)
    with pytest.raises(SinkUnavailableError):
        retrier.next_try(1, "503 from the server")
    with pytest.raises(SinkUnavailableError, match="503 from the server"):
        retrier.fail_fast()
    assert clock.sleeps == []
    retrier.begin_batch()
    retrier.fail_fast()  # a new batch gets a fresh chance


def test_a_sink_needs_a_bound_on_its_retries() -> None:
    with pytest.raises(ValueError, match="bound on retries"):
        SinkRetrier("search", Backoff(retries=None))
    assert SINK_BACKOFF.retries is not None
