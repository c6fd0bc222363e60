"""A Kafka log URL that names no running broker: every command says so in one line naming
the address, with exit code 2, after waiting at most the URL's ``timeout`` (never a raw
``KafkaException``, a bare ``TimeoutError``, client log lines or a traceback). Run as a
user would, in a process of its own, so everything printed to stderr is seen."""

from __future__ import annotations

from pathlib import Path

import pytest

from changefeed.backends import LogUnavailableError, PublishError, open_backend
from changefeed.change import ChangeMeta
from changefeed.testing.servers import free_port
from tests._cli import cf, recorder_env


@pytest.fixture
def dead_log() -> str:
    """A Kafka URL whose port nobody listens on, with a one-second timeout."""
    return f"kafka://127.0.0.1:{free_port()}?timeout=1"


STATIC = [
    ["status"],
    ["checkpoint", "show", "recorder"],
    ["topics", "list"],
    ["topics", "create", "records", "-p", "2"],
    ["topics", "describe", "records"],
    ["tail", "records", "-n", "1"],
    ["changes", "records", "--doc-id", "a"],
    ["run", "recorder", "--once"],
    ["run", "recorder"],
]


@pytest.mark.parametrize(
    ("args", "group"),
    [(args, None) for args in STATIC] + [(["run", "recorder"], "readers")],
    ids=[" ".join(args) for args in STATIC] + ["run in a consumer group"],
)
def test_an_unreachable_broker_is_one_line_naming_it_exit_2(
    tmp_path: Path, dead_log: str, args: list[str], group: str | None
) -> None:
    env = {**recorder_env(tmp_path), "CHANGEFEED_LOG": dead_log}
    if group is not None:
        env["RECORDER_GROUP"] = group
    result = cf(env, *args)
    address = dead_log.removeprefix("kafka://").partition("?")[0]
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        f"changefeed: error: cannot reach Kafka at {address} within 1s: "
    )
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_publisher_with_no_broker_raises_a_publish_error_naming_it(dead_log: str) -> None:
    """A `PublishError`, like every publisher failure, that is also a `LogUnavailableError`
    (so the CLI reports it as an unreachable log)."""
    backend = open_backend(dead_log)
    publisher = backend.publisher()
    try:
        with pytest.raises(PublishError, match="cannot reach Kafka at 127.0.0.1:") as info:
            publisher.publish("form", ChangeMeta("a", "sql", "docs"))
        assert isinstance(info.value, LogUnavailableError)
    finally:
        publisher.close()
        backend.close()
