"""Feed options as one typed value (`FeedOptions`) from a pillow's ``feed_options`` dict to
the log's change feed, with a clear error for an option no log or not this log has."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from changefeed.app import App
from changefeed.backends import FeedOptionError, FeedOptions
from changefeed.backends.local.feed import SQLiteChangeFeed
from changefeed.processors import NoopProcessor


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    app = App(f"sqlite:///{tmp_path / 'log.db'}", f"sqlite:///{tmp_path / 'state.db'}")
    yield app
    app.close()


def test_only_the_options_set_reach_the_backend() -> None:
    assert FeedOptions().keywords() == {"client_id": "changefeed", "idle_timeout": 1.0}
    options = FeedOptions.from_dict({"client_id": "p", "strict": True, "group_id": "g"})
    assert options.keywords() == {
        "client_id": "p",
        "idle_timeout": 1.0,
        "strict": True,
        "group_id": "g",
    }


def test_an_unknown_option_is_named_with_the_known_ones() -> None:
    with pytest.raises(FeedOptionError, match=r"unknown feed option 'grup_id' \(known: client_id"):
        FeedOptions.from_dict({"grup_id": "g"})


def test_a_pillow_feed_gets_its_options_and_defaults(app: App) -> None:
    """The pillow's name and an idle timeout of its max wait, unless given."""
    pillow = app.constructed_pillow(
        "p", ["t"], NoopProcessor(), feed_options={"strict": True, "poll_interval": 0.5}
    )
    feed = pillow.change_feed
    assert isinstance(feed, SQLiteChangeFeed)
    assert (feed.strict, feed.poll_interval, feed.idle_timeout) == (True, 0.5, 1.0)
    feed.close()


def test_an_option_of_another_log_is_refused(app: App) -> None:
    with pytest.raises(FeedOptionError, match="'group_id': not an option of this log"):
        app.constructed_pillow("p", ["t"], NoopProcessor(), feed_options={"group_id": "g"})
