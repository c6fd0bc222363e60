"""``status`` (text and ``--json``) redacts credentials wherever a URL or a message quoting one
appears, and shows errors of pillows that are no longer in the app as orphaned (issue 12).

The app is a module written into the test's folder: a pillow, a bridge-like runnable that
queues errors (so its entries are not orphaned) and whose health quotes a URL with a password,
and a watched replication slot on a closed port, its URL with a password.
"""

from __future__ import annotations

import json
import os
import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest

from changefeed.change import Change, ChangeMeta
from changefeed.errors import ErrorQueue
from tests._cli import cf

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-pw"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


APP = """
from pathlib import Path
from changefeed.app import App
from changefeed.lifecycle import Health
from changefeed.processors.base import NoopProcessor

HERE = Path(__file__).parent
SECRET = {secret!r}
app = App(f"sqlite:///{{HERE}}/log.db", f"sqlite:///{{HERE}}/state.db")
app.watch_replication_slot("postgresql://cdc:" + SECRET + "@127.0.0.1:{port}/db", "slot_one")


class Bridge:
    name = "bridge"
    scalable = False

    def bootstrap(self):
        pass

    def run(self, *, forever=True, num_processes=1, process_number=0):
        return 0

    def stop(self):
        pass

    def retry_errors(self, limit=500):
        return (0, 0)

    def health(self):
        url = "http://admin:" + SECRET + "@127.0.0.1:1/db"
        return Health(
            "bridge", "couch-bridge", error="cannot reach " + url, detail={{"source": url}}
        )


@app.pillow("cases")
def cases(app):
    return app.constructed_pillow("cases", ["case"], NoopProcessor(), max_wait=0.1)


app.add_runnable("bridge", lambda app: Bridge())
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "status_app.py").write_text(
        textwrap.dedent(APP.format(secret=SECRET, port=_closed_port()))
    )
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src"), str(ROOT)]),
        "CHANGEFEED_APP": "status_app:app",
        "CHANGEFEED_LOG": f"sqlite:///{tmp_path}/log.db",
        "CHANGEFEED_STATE": f"sqlite:///{tmp_path}/state.db",
    }
    environ.pop("CHANGEFEED_CDC_DB", None)
    assert cf(environ, "topics", "create", "case").returncode == 0
    queue = ErrorQueue(environ["CHANGEFEED_STATE"])
    for pillow in ("retired", "bridge", "cases"):
        change = Change("case", 0, 0, ChangeMeta(f"{pillow}-doc", "memory", "db"))
        queue.add(pillow, change, "p", ValueError("refused"), retryable=False)
    return environ


def test_status_json_redacts_every_url_and_lists_orphans(env: dict[str, str]) -> None:
    extra = f"postgresql://ops:{SECRET}@127.0.0.1:{_closed_port()}/other"
    result = cf(env, "status", "--json", "--slot", "slot_two", "--cdc-db", extra)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    by_kind = {
        next(
            k for k in ("pillow", "runnable", "replication_slot", "orphaned_errors") if k in row
        ): row
        for row in rows
        if "replication_slot" not in row
    }
    # Exact otherwise: the pillow row is what pillow_status says, untouched.
    pillow = by_kind["pillow"]
    assert pillow["pillow"] == "cases" and pillow["errors_parked"] == 1
    assert [(p["topic"], p["partition"], p["head"]) for p in pillow["partitions"]] == [
        ("case", 0, 0)
    ]
    bridge = by_kind["runnable"]
    assert bridge["runnable"] == "bridge"
    assert bridge["error"] == "cannot reach http://***@127.0.0.1:1/db"
    assert bridge["source"] == "http://***@127.0.0.1:1/db"
    slots = {row["replication_slot"]: row for row in rows if "replication_slot" in row}
    assert slots["slot_one"]["database"].startswith("postgresql://***@127.0.0.1:")
    assert slots["slot_two"]["database"] == extra.replace(f"ops:{SECRET}", "***")
    assert slots["slot_two"]["exists"] is None and slots["slot_two"]["error"]
    # The bridge queues errors and is retried: only the retired pillow's entry is orphaned.
    orphans = [row for row in rows if "orphaned_errors" in row]
    assert orphans == [{"orphaned_errors": "retired", "entries": 1}]


def test_status_text_shows_orphans_and_no_secret(env: dict[str, str]) -> None:
    result = cf(env, "status")
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "orphaned errors (pillow not in this app, never retried): retired (1)" in result.stdout
    assert "errors purge --orphaned" in result.stdout
    assert "bridge (couch-bridge)" in result.stdout and "***@127.0.0.1:1/db" in result.stdout
    # Asked about one pillow: the app-wide orphan line is not part of the answer.
    assert "orphaned" not in cf(env, "status", "cases").stdout


def test_a_runnable_that_queues_errors_is_not_orphaned(env: dict[str, str]) -> None:
    listed = json.loads(cf(env, "errors", "list", "--json").stdout)
    assert {e["pillow"]: e["orphaned"] for e in listed} == {
        "retired": True,
        "bridge": False,
        "cases": False,
    }
    purged = cf(env, "errors", "purge", "--orphaned")
    assert purged.returncode == 0 and "1 error purged" in purged.stdout, purged.stderr
    left = {e["pillow"] for e in json.loads(cf(env, "errors", "list", "--json").stdout)}
    assert left == {"bridge", "cases"}
    bridge_id = next(
        e["id"]
        for e in json.loads(cf(env, "errors", "list", "--json").stdout)
        if e["pillow"] == "bridge"
    )
    by_id = cf(env, "errors", "retry", "--id", str(bridge_id))
    assert by_id.returncode == 2 and "errors retry --pillow bridge" in by_id.stderr
    assert "orphaned" not in by_id.stderr
    bulk = cf(env, "errors", "retry", "--pillow", "bridge")
    assert bulk.returncode == 0, bulk.stderr
    assert "bridge: 0 succeeded, 0 failed again" in bulk.stdout


def test_errors_json_hides_credentials_an_exception_quoted(env: dict[str, str]) -> None:
    """A failure's message often quotes the URL it could not reach: `errors list --json` and
    `errors show --json` keep every value exact but the password."""
    queue = ErrorQueue(env["CHANGEFEED_STATE"])
    change = Change("case", 0, 1, ChangeMeta("quoting-doc", "memory", "db"))
    url = f"postgresql://ops:{SECRET}@db.internal:5432/reports"
    queue.add("cases", change, "p", ConnectionError(f"cannot connect to {url}"), retryable=False)
    listed = cf(env, "errors", "list", "--json", "--pillow", "cases")
    assert listed.returncode == 0, listed.stderr
    assert SECRET not in listed.stdout
    entries = json.loads(listed.stdout)
    (entry,) = [e for e in entries if e["document_id"] == "quoting-doc"]
    assert entry["message"] == "cannot connect to postgresql://***@db.internal:5432/reports"
    shown = cf(env, "errors", "show", str(entry["id"]), "--json")
    assert shown.returncode == 0, shown.stderr
    assert SECRET not in shown.stdout and "db.internal:5432/reports" in shown.stdout
