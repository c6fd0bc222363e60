"""Backends are extras (issue 20 item 21): the core install runs the embedded default and the
demo, and a backend used without its extra is one line naming the ``pip install`` to run
(exit code 2 from the CLI, `MissingExtraError` from the library).

Each test runs Python in a new process in which the extras' client libraries cannot be
imported (``sys.modules[name] = None`` makes every import of them fail, as on an install
without them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CLIENTS = {
    "kafka": ("confluent_kafka",),
    "postgres": ("psycopg", "psycopg2"),
    "elastic": ("elasticsearch", "elastic_transport"),
    "redis": ("redis",),
    "couchdb": ("httpx",),
    "web": ("starlette", "uvicorn", "prometheus_client"),
}
EVERY_CLIENT = tuple(name for names in CLIENTS.values() for name in names)

CLI = "from changefeed.cli import main\nmain(sys.argv[1:])\n"

APP = """
from changefeed import App

app = App()


@app.pillow("search")
def search(app):
    from changefeed.processors.elastic import ElasticProcessor

    return app.constructed_pillow("search", ["case"], ElasticProcessor("http://127.0.0.1:1", "cases"))


@app.pillow("cache")
def cache(app):
    from changefeed.processors.cache import CacheInvalidationProcessor

    return app.constructed_pillow("cache", ["case"], CacheInvalidationProcessor("redis://127.0.0.1:1", ["case:{document_id}"]))


@app.pillow("couch")
def couch(app):
    from changefeed.stores.couch import CouchDocumentStore

    app.document_stores.register(CouchDocumentStore("http://127.0.0.1:1/cases"))
    return app.constructed_pillow("couch", ["case"], [])
"""


def run_without(
    blocked: tuple[str, ...], code: str, *args: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``python -c CODE ARGS`` with the ``blocked`` modules made unimportable."""
    prelude = f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(cwd)]),
        "CHANGEFEED_LOG": f"sqlite:///{cwd}/log.db",
        "CHANGEFEED_STATE": f"sqlite:///{cwd}/state.db",
    }
    for name in ("CHANGEFEED_APP", "CHANGEFEED_DEBUG"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-c", prelude + code, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


# (extra, command line): each reaches a backend of that extra.
CLI_CASES = [
    ("kafka", "--log kafka://127.0.0.1:1 topics list"),
    ("postgres", "--state postgresql+psycopg://u@127.0.0.1:1/db errors list"),
    ("postgres", "--state postgresql://u@127.0.0.1:1/db checkpoint history"),
    ("postgres", "cdc slot list --db postgresql://u@127.0.0.1:1/db"),
    ("elastic", "--app apps:app run search --once"),
    ("redis", "--app apps:app run cache --once"),
    ("couchdb", "--app apps:app run couch --once"),
    ("web", "dashboard --port 0"),
    ("web", "--app apps:app run --all --metrics-port 0"),
]


@pytest.mark.parametrize("extra, command", CLI_CASES)
def test_cli_names_the_missing_extra_on_one_line(tmp_path: Path, extra: str, command: str) -> None:
    (tmp_path / "apps.py").write_text(APP)
    done = run_without(CLIENTS[extra], CLI, *command.split(" "), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("changefeed: error: "), done.stderr
    assert f"needs the {extra!r} extra (" in done.stderr, done.stderr
    assert done.stderr.endswith(f": pip install 'changefeed[{extra}]'\n"), done.stderr


LIBRARY_CASES = [
    ("kafka", "import changefeed.backends.kafka"),
    ("kafka", "from changefeed import open_backend; open_backend('kafka://127.0.0.1:1')"),
    ("postgres", "import changefeed.sources.postgres_cdc"),
    ("postgres", "from changefeed.db import make_engine; make_engine('postgresql://u@h/db')"),
    ("elastic", "from changefeed.processors.elastic import ElasticProcessor"),
    ("redis", "import changefeed.processors.cache"),
    ("couchdb", "import changefeed.stores.couch"),
    ("couchdb", "import changefeed.sources.couch_bridge"),
    ("web", "import changefeed.web"),
    ("web", "import changefeed.metrics"),
]


@pytest.mark.parametrize("extra, statement", LIBRARY_CASES)
def test_library_raises_missing_extra_error(tmp_path: Path, extra: str, statement: str) -> None:
    code = (
        "from changefeed.extras import MissingExtraError\n"
        f"try:\n    {statement}\n"
        "except MissingExtraError as exc:\n"
        "    assert isinstance(exc, ImportError)\n"
        "    print(exc.extra, exc, sep='|')\n"
    )
    done = run_without(CLIENTS[extra], code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got_extra, message = done.stdout.rstrip("\n").split("|")
    assert got_extra == extra
    assert message.endswith(f": pip install 'changefeed[{extra}]'"), message


def test_core_modules_import_without_any_extra(tmp_path: Path) -> None:
    modules = [
        "changefeed",
        "changefeed.app",
        "changefeed.demo",
        "changefeed.rebuild",
        "changefeed.verify",
        "changefeed.supervisor",
        "changefeed.retry_runner",
        "changefeed.processors.reports",
        "changefeed.processors.elastic.errors",
        "changefeed.sources.outbox",
        "changefeed.sources.app_layer",
    ]
    commands = [
        "pillows", "checkpoint", "surgery", "changes", "errors", "tail", "demo", "topics",
        "outbox", "reports", "reindex", "supervise", "dashboard", "verify", "republish",
    ]  # fmt: skip
    code = "import importlib\n" + "".join(
        f"importlib.import_module({name!r})\n"
        for name in [*modules, *(f"changefeed.cli.{c}" for c in commands)]
    )
    done = run_without(EVERY_CLIENT, code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_demo_runs_on_the_core_install(tmp_path: Path) -> None:
    args = ["demo", "--cases", "30", "--forms", "20", "--updates", "50"]
    done = run_without(EVERY_CLIENT, CLI, *args, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: every report table matches its source documents" in done.stdout
