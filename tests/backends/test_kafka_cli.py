"""``changefeed topics ...`` against a real Kafka-protocol broker (noida-db), through the real
entry point (`changefeed.cli.main`): output, exit codes and one-line errors."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests._cli import cf_in_process

changefeed = cf_in_process


def topic() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


def test_create_list_describe(capsys: pytest.CaptureFixture[str], kafka_url: str) -> None:
    t1, t2 = topic(), topic()
    code, out, _ = changefeed(
        capsys,
        "--log",
        kafka_url,
        "topics",
        "create",
        t1,
        t2,
        "-p",
        "3",
        "-c",
        "retention.ms=60000",
    )
    assert code == 0 and f"created {t1} (3 partitions)" in out
    code, out, _ = changefeed(capsys, "--log", kafka_url, "topics", "list")
    assert code == 0 and f"{t1}\t3" in out and f"{t2}\t3" in out
    code, out, _ = changefeed(capsys, "--log", kafka_url, "topics", "list", "--json")
    assert {"name": t1, "partitions": 3} in json.loads(out)

    changefeed(capsys, "--log", kafka_url, "topics", "create", t1, "-p", "3")  # idempotent
    from changefeed.backends import open_backend
    from changefeed.change import ChangeMeta

    with open_backend(kafka_url).publisher() as pub:
        pub.publish_many([(t1, ChangeMeta(f"d{i}", "sql", "main")) for i in range(30)])
    code, out, _ = changefeed(capsys, "--log", kafka_url, "topics", "describe", t1, "--json")
    assert code == 0
    described = json.loads(out)
    assert [p["partition"] for p in described["partitions"]] == [0, 1, 2]
    assert sum(p["records"] for p in described["partitions"]) == 30
    assert all(p["earliest"] == 0 for p in described["partitions"])
    assert described["config"]["retention.ms"] == "60000"
    code, out, _ = changefeed(capsys, "--log", kafka_url, "topics", "describe", t1)
    assert code == 0 and "retention.ms = 60000" in out and "earliest" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["describe", "no-such-topic"], "unknown topic 'no-such-topic'"),
        (["add-partitions", "no-such-topic", "3"], "unknown topic 'no-such-topic'"),
        (["create", "bad/name"], "invalid topic name 'bad/name'"),
        (["create", "ok-name", "-c", "novalue"], "--config takes KEY=VALUE"),
        (["create", "ok-name", "-c", "no.such.setting=1"], "Kafka rejected topic 'ok-name'"),
    ],
)
def test_bad_input_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], kafka_url: str, args: list[str], message: str
) -> None:
    code, _, err = changefeed(capsys, "--log", kafka_url, "topics", *args)
    assert code == 2
    assert err.startswith("changefeed: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_shrinking_is_refused(capsys: pytest.CaptureFixture[str], kafka_url: str) -> None:
    t = topic()
    changefeed(capsys, "--log", kafka_url, "topics", "create", t, "-p", "3")
    code, _, err = changefeed(capsys, "--log", kafka_url, "topics", "add-partitions", t, "2")
    assert code == 2 and "partitions cannot be removed" in err


def test_same_commands_on_the_embedded_log(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = f"sqlite:///{tmp_path}/log.db"
    assert changefeed(capsys, "--log", log, "topics", "create", "form", "-p", "2")[0] == 0
    assert changefeed(capsys, "--log", log, "topics", "add-partitions", "form", "3")[0] == 0
    code, out, _ = changefeed(capsys, "--log", log, "topics", "describe", "form", "--json")
    assert code == 0 and len(json.loads(out)["partitions"]) == 3
    code, _, err = changefeed(
        capsys, "--log", log, "topics", "create", "case", "-c", "retention.ms=1"
    )
    assert code == 2 and "--config: not supported by this log" in err
