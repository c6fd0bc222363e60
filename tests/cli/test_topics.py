"""``changefeed topics`` growing a topic, on the embedded log and on Kafka: whichever command
grows it (``add-partitions``, or ``create`` of an existing topic with more partitions),
every pillow reading the topic gets offset-0 checkpoints for the new partitions, recorded in
its checkpoint history, so changes published there before it restarts are never skipped."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from changefeed.change import TopicPartition
from changefeed.checkpoints import CheckpointStore
from tests._cli import cf_in_process

changefeed = cf_in_process


@pytest.fixture
def app_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_url: str) -> list[str]:
    """Global options naming a fresh app with a pillow ``reader`` of the topic ``grown``
    and a pillow ``other`` of another topic, on ``log_url``, with state in ``tmp_path``."""
    module = f"topicsapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            from changefeed.app import App
            from changefeed.processors import NoopProcessor

            app = App()

            @app.pillow("reader")
            def reader(app):
                return app.constructed_pillow("reader", ["grown"], NoopProcessor())

            @app.pillow("other")
            def other(app):
                return app.constructed_pillow("other", ["unrelated"], NoopProcessor())
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return ["--app", f"{module}:app", "--log", log_url, "--state", f"sqlite:///{tmp_path}/s.db"]


@pytest.mark.parametrize(
    ("grow", "says"),
    [
        (["add-partitions", "grown", "4"], "grown: 2 -> 4 partitions"),
        (["create", "grown", "-p", "4"], "topic grown existed with 2 partitions; grown to 4"),
    ],
    ids=["add-partitions", "create"],
)
def test_growing_a_topic_seeds_checkpoints_at_zero(
    capsys: pytest.CaptureFixture[str], app_args: list[str], grow: list[str], says: str
) -> None:
    assert changefeed(capsys, *app_args, "topics", "create", "grown", "-p", "2")[0] == 0
    checkpoints = CheckpointStore(app_args[-1])
    checkpoints.commit("reader", {TopicPartition("grown", 0): 5, TopicPartition("grown", 1): 7})

    code, out, _ = changefeed(capsys, *app_args, "topics", *grow)
    assert code == 0, out
    assert says in out
    assert "checkpoints at offset 0 for the new partitions of: reader" in out
    assert checkpoints.get("reader") == {
        TopicPartition("grown", 0): 5,
        TopicPartition("grown", 1): 7,
        TopicPartition("grown", 2): 0,
        TopicPartition("grown", 3): 0,
    }
    assert {(h.tp.partition, h.new_offset) for h in checkpoints.history("reader")} == {
        (2, 0),
        (3, 0),
    }
    assert checkpoints.get("other") == {}

    code, out, _ = changefeed(capsys, *app_args, "topics", *grow)
    assert code == 0 and "checkpoints at offset 0" not in out
    assert len(checkpoints.history("reader")) == 2
