"""The Couch bridge against pouchdb-server and the embedded log: classify, route, publish,
checkpoint by seq; unclassifiable documents in the error queue; follow the continuous feed."""

from __future__ import annotations

import sys
import textwrap
import threading
from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner

from changefeed.app import App
from changefeed.change import ChangeMeta
from changefeed.errors import PARKED
from changefeed.pillow import Pillow
from changefeed.processors import FunctionProcessor
from changefeed.runner import Runnable, run_runnable
from changefeed.sources.couch import CouchChange
from changefeed.sources.couch_bridge import (
    CLASSIFY,
    CouchBridgePillow,
    CouchDocumentClassifier,
    UnclassifiableDocumentError,
    add_couch_bridge,
    get_change_feed_pillow_for_db,
)
from tests.harness._util import wait_until


def _bulk(db_url: str, docs: list[dict[str, object]]) -> None:
    httpx.post(f"{db_url}/_bulk_docs", json={"docs": docs}).raise_for_status()


def _delete(db_url: str, doc_id: str) -> None:
    rev = httpx.get(f"{db_url}/{doc_id}").json()["_rev"]
    httpx.delete(f"{db_url}/{doc_id}", params={"rev": rev}).raise_for_status()


def _log(app: App) -> list[tuple[str, ChangeMeta]]:
    """Every stub in the log, as (topic, stub), topic by topic."""
    feed = app.change_feed(app.router.topics)
    out = []
    for change in feed.iter_changes(dict.fromkeys(feed.topic_partitions(), 0)):
        if change is not None:
            assert change.metadata is not None
            out.append((change.topic, change.metadata))
    feed.close()
    return out


def test_bridge_classifies_routes_publishes_and_checkpoints(app: App, couch_db: str) -> None:
    _bulk(
        couch_db,
        [
            {"_id": "c1", "doc_type": "case", "domain": "acme", "subtype": "patient"},
            {"_id": "f1", "type": "form", "domain": "acme"},
            {"_id": "u1", "doc_type": "CommCareUser"},
            {"_id": "x1", "name": "no type at all"},
            {"_id": "c2", "doc_type": "case-Deleted", "domain": "acme"},
            {"_id": "_design/views", "views": {}},
            {"_id": "gone", "doc_type": "case"},
        ],
    )
    _delete(couch_db, "gone")
    bridge = get_change_feed_pillow_for_db(app, couch_db, batch_size=3)
    db_name = couch_db.rsplit("/", 1)[1]
    assert bridge.name == f"couch-bridge-{db_name}"
    bridge.bootstrap()
    assert bridge.run(forever=False) == 7
    stubs = {meta.document_id: (topic, meta) for topic, meta in _log(app)}
    assert set(stubs) == {"c1", "f1", "u1", "c2", "gone"}
    topic, c1 = stubs["c1"]
    assert topic == "case"
    assert (c1.data_source_type, c1.data_source_name) == ("couch", db_name)
    assert (c1.document_type, c1.document_subtype, c1.domain, c1.is_deletion) == (
        "case",
        "patient",
        "acme",
        False,
    )
    assert c1.document_rev is not None and c1.document_rev.startswith("1-")
    assert stubs["f1"][0] == "form" and stubs["u1"][0] == "meta"
    assert stubs["c2"][0] == "case" and stubs["c2"][1].is_deletion  # soft delete
    # A hard delete's tombstone has no type: still published, to the default topic.
    assert stubs["gone"][0] == "meta" and stubs["gone"][1].is_deletion
    assert stubs["gone"][1].document_type is None

    (error,) = app.error_queue.list(bridge.name)
    assert (error.document_id, error.processor, error.status) == ("x1", CLASSIFY, "parked")
    assert "no 'doc_type' or 'type' field" in error.message
    assert orjson.loads(error.stub)["doc"]["name"] == "no type at all"

    saved = bridge.checkpoint
    assert saved is not None and saved.position == 7
    status = bridge.health().to_dict()  # what `changefeed status` shows for the bridge
    assert [(p["topic"], p["checkpoint"], p["lag"]) for p in status["partitions"]] == [
        (f"couch:{db_name}", 7, 0)
    ]
    assert status["errors_parked"] == 1
    assert status["seq"] == saved.seq and status["processed"] == 7
    # The same positions through the explicit surface (``changefeed checkpoint``).
    assert app.checkpoints.get(bridge.name) == {tp: 7 for tp in bridge.topic_partitions()}
    assert bridge.latest_offsets() == {tp: 7 for tp in bridge.topic_partitions()}

    # Restart: only what is new is published.
    _bulk(couch_db, [{"_id": "c3", "doc_type": "case"}])
    again = get_change_feed_pillow_for_db(app, couch_db)
    assert again.health().detail["lag"] == 1 and again.pending() == 1
    assert again.run(forever=False) == 1
    assert [m.document_id for _, m in _log(app)].count("c1") == 1
    assert "c3" in {m.document_id for _, m in _log(app)}


def test_stubs_lead_pillows_to_the_couch_documents(app: App, couch_db: str) -> None:
    """The helper registers the database as the stubs' document store."""
    _bulk(couch_db, [{"_id": f"c{i}", "doc_type": "case", "n": i} for i in range(5)])
    get_change_feed_pillow_for_db(app, couch_db).run(forever=False)
    seen: dict[str, int] = {}

    def record(change: object) -> None:
        doc = change.document  # type: ignore[attr-defined]
        seen[doc["_id"]] = doc["n"]

    pillow = app.constructed_pillow("case-reader", ["case"], FunctionProcessor(record))
    pillow.run(forever=False)
    assert seen == {f"c{i}": i for i in range(5)}
    assert isinstance(pillow, Pillow)


def test_bridge_follows_the_continuous_feed(app: App, couch_db: str) -> None:
    bridge = get_change_feed_pillow_for_db(app, couch_db, heartbeat=0.1, max_wait=0.05)
    thread = threading.Thread(target=bridge.run, daemon=True)
    thread.start()
    try:
        for i in range(3):
            _bulk(couch_db, [{"_id": f"live{i}", "doc_type": "form"}])
        wait_until(lambda: len(_log(app)) == 3, "three stubs in the log", timeout=20)
        _delete(couch_db, "live1")
        wait_until(lambda: len(_log(app)) == 4, "the deletion in the log", timeout=20)
    finally:
        bridge.stop()
        thread.join(10)
    assert not thread.is_alive()
    last = _log(app)[-1][1]
    assert last.document_id == "live1" and last.is_deletion
    saved = bridge.checkpoint
    assert saved is not None and saved.position == 4


def test_custom_classifier_and_retrying_unclassifiable(app: App, couch_db: str) -> None:
    def by_prefix(change: CouchChange, source: str) -> ChangeMeta:
        kind, sep, _ = change.id.partition(":")
        if not sep:
            raise UnclassifiableDocumentError(f"id {change.id!r} has no kind prefix")
        return ChangeMeta(
            change.id, "couch", source, document_type=kind, is_deletion=change.deleted
        )

    _bulk(couch_db, [{"_id": "case:1"}, {"_id": "oops"}])
    bridge = get_change_feed_pillow_for_db(app, couch_db, classifier=by_prefix)
    bridge.run(forever=False)
    assert [(t, m.document_id) for t, m in _log(app)] == [("case", "case:1")]
    assert bridge.unclassifiable == 1
    assert bridge.retry_errors() == (0, 1)  # still unclassifiable
    assert [e.status for e in app.error_queue.list(bridge.name)] == [PARKED]  # not scheduled
    # The operator fixes the classifier: the queued document is published and resolved.
    bridge.classifier = CouchDocumentClassifier(type_fields=("doc_type",))
    _bulk(
        couch_db,
        [{"_id": "oops", "_rev": httpx.get(f"{couch_db}/oops").json()["_rev"], "doc_type": "form"}],
    )
    assert bridge.retry_errors() == (1, 0)
    assert ("form", "oops") in [(t, m.document_id) for t, m in _log(app)]
    assert app.error_queue.list(bridge.name) == []


def test_operator_reset_to_zero_replays_from_the_start(app: App, couch_db: str) -> None:
    _bulk(couch_db, [{"_id": "a", "doc_type": "case"}])
    bridge = get_change_feed_pillow_for_db(app, couch_db)
    bridge.run(forever=False)
    (tp,) = bridge.topic_partitions()
    assert bridge.earliest_offsets() == {tp: 0}  # `checkpoint reset` uses it
    app.checkpoints.set(bridge.name, {tp: 0}, reason="replay")
    assert bridge.checkpoint is None
    assert bridge.run(forever=False) == 1
    assert [m.document_id for _, m in _log(app)] == ["a", "a"]


def test_classifier_rejects_bad_fields() -> None:
    classify = CouchDocumentClassifier()
    with pytest.raises(UnclassifiableDocumentError, match="must be a non-empty string"):
        classify(CouchChange(1, "a", "1-x", False, {"doc_type": 3}), "db")
    with pytest.raises(UnclassifiableDocumentError, match="'domain' must be a string"):
        classify(CouchChange(1, "a", "1-x", False, {"doc_type": "case", "domain": 1}), "db")
    with pytest.raises(UnclassifiableDocumentError, match="no document"):
        classify(CouchChange(1, "a", "1-x", False, None), "db")


def test_helper_needs_a_server_for_bare_names(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHANGEFEED_COUCH_URL", raising=False)
    with pytest.raises(ValueError, match="CHANGEFEED_COUCH_URL"):
        get_change_feed_pillow_for_db(app, "cases")
    bridge = get_change_feed_pillow_for_db(app, "cases", couch_url="http://127.0.0.1:1")
    assert isinstance(bridge, CouchBridgePillow) and bridge.topic == "couch:cases"
    with pytest.raises(ValueError, match="one process"):
        bridge.run(num_processes=2)
    with pytest.raises(ValueError, match="one process"):
        run_runnable(bridge, num_processes=2)


def test_bridge_is_a_runnable_registered_with_the_app(app: App, couch_db: str) -> None:
    """Not a pillow: registered as a runnable, built and run through ``get_runnable``, with
    signals handled by the runner; its health reports the seq checkpoint and progress."""
    name = add_couch_bridge(app, couch_db, name="the-bridge")
    assert name not in app.pillow_names and name in app.runnable_names
    _bulk(couch_db, [{"_id": "a", "doc_type": "case"}, {"_id": "b", "doc_type": "form"}])
    bridge = app.get_runnable(name)
    assert isinstance(bridge, CouchBridgePillow) and isinstance(bridge, Runnable)
    assert bridge.scalable is False
    before = bridge.health()
    assert (before.kind, before.state, before.processed) == ("couch-bridge", "idle", 0)
    assert before.detail["checkpoint"] is None and before.detail["lag"] == 2
    assert run_runnable(bridge, forever=False) == 2
    after = bridge.health()
    assert (after.state, after.processed, after.error) == ("stopped", 2, None)
    assert after.last_progress_at is not None
    assert after.detail["checkpoint"] == 2 and after.detail["lag"] == 0
    assert after.detail["published"] == 2 and after.detail["seq"] is not None


def test_health_reports_an_unreachable_couchdb(app: App) -> None:
    bridge = get_change_feed_pillow_for_db(app, "http://127.0.0.1:1/cases")
    health = bridge.health()
    assert health.detail["lag"] is None and health.error is not None
    assert health.error.startswith("lag unknown: ConnectError")


def test_cli_runs_and_reports_the_bridge(
    tmp_path: Path, couch_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import changefeed.cli.pillows  # noqa: F401 - registers run/status
    from changefeed.cli.common import cli

    (tmp_path / "bridge_app.py").write_text(
        textwrap.dedent(f"""
        from changefeed import App
        from changefeed.sources.couch_bridge import add_couch_bridge

        def make_app():
            app = App("sqlite:///{tmp_path}/log.db", "sqlite:///{tmp_path}/state.db")
            add_couch_bridge(app, {couch_db!r}, name="bridge")
            return app
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bridge_app", raising=False)
    _bulk(couch_db, [{"_id": "a", "doc_type": "case"}, {"_id": "b", "doc_type": "form"}])
    runner = CliRunner()
    result = runner.invoke(cli, ["--app", "bridge_app:make_app", "run", "bridge", "--once"])
    assert result.exit_code == 0, result.output
    assert "bridge: 2 changes read" in result.output
    _bulk(couch_db, [{"_id": "c", "doc_type": "case"}])
    result = runner.invoke(cli, ["--app", "bridge_app:make_app", "status", "--json", "bridge"])
    assert result.exit_code == 0, result.output
    (status,) = orjson.loads(result.output)
    assert status["lag"] == 1 and status["partitions"][0]["checkpoint"] == 2
    assert add_couch_bridge(App(), "http://h:1/my(db)") == "couch-bridge-my_db_"
