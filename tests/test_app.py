"""`App.constructed_pillow` keeps pillowtop's loose keywords and groups them into the
pillow's settings objects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from changefeed import App, NoopProcessor
from changefeed.backoff import Backoff
from changefeed.errors import RetryPolicy
from changefeed.pillow import BatchPolicy, RetrySettings


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    a = App(f"sqlite:///{tmp_path}/log.db", f"sqlite:///{tmp_path}/state.db")
    yield a
    a.close()


def test_loose_keywords_make_the_settings(app: App) -> None:
    backoff = Backoff(base=0.5)
    pillow = app.constructed_pillow(
        "p",
        ["case"],
        NoopProcessor(),
        batch_size=10,
        max_wait=0.2,
        adaptive=False,
        max_batch_retries=None,
        batch_backoff=backoff,
        stale_read_retries=0,
    )
    assert pillow.batching == BatchPolicy(10, 0.2, adaptive=False)
    assert pillow.retries == RetrySettings(
        app.retry_policy, max_batch_retries=None, batch_backoff=backoff, stale_read_retries=0
    )
    assert pillow.retry_policy is app.retry_policy
    assert pillow.fetcher.stale_read_retries == 0


def test_settings_objects_are_taken_as_given(app: App) -> None:
    batching = BatchPolicy(5)
    retries = RetrySettings(RetryPolicy(max_attempts=2))
    pillow = app.constructed_pillow(
        "p", ["case"], NoopProcessor(), batching=batching, retries=retries
    )
    assert (pillow.batching, pillow.retries) == (batching, retries)
    assert pillow.retry_policy is retries.retry_policy


def test_an_object_and_its_loose_fields_together_are_refused(app: App) -> None:
    with pytest.raises(TypeError, match="batching= or batch_size, not both"):
        app.constructed_pillow(
            "p", ["case"], NoopProcessor(), batching=BatchPolicy(5), batch_size=10
        )
    with pytest.raises(TypeError, match="retries must be a RetrySettings"):
        app.constructed_pillow("p", ["case"], NoopProcessor(), retries={"max_batch_retries": 1})


class _WantsBig(NoopProcessor):
    """A processor preferring batches of 4,000 (as a report processor of 800 data sources)."""

    @property
    def batch_size_hint(self) -> int | None:
        return 4000


def test_given_no_batch_size_a_pillow_takes_what_its_processors_prefer(app: App) -> None:
    assert app.constructed_pillow("p", ["case"], NoopProcessor()).batching == BatchPolicy()
    wanted = app.constructed_pillow("q", ["case"], [NoopProcessor(), _WantsBig()])
    assert wanted.batching == BatchPolicy(4000)
    assert wanted.buffer.policy.batch_size == 4000
    # anything said about batching wins over the processors' preference
    said = app.constructed_pillow("r", ["case"], _WantsBig(), max_wait=0.5)
    assert said.batching == BatchPolicy(max_wait=0.5)
    assert app.constructed_pillow("s", ["case"], _WantsBig(), batch_size=7).batching.batch_size == 7
