"""A dashboard on a free port, against an embedded SQLite log and state in a temp dir."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn

from changefeed.app import App
from changefeed.change import Change, ChangeMeta
from changefeed.processors.base import FunctionProcessor
from changefeed.web import create_app
from tests.harness._util import free_port, wait_for_port


@dataclass
class Site:
    app: App
    url: str
    broken: set[str] = field(default_factory=set)
    """Document ids the pillow's processor refuses (clear it to make retries succeed)."""

    def publish(self, *ids: str) -> None:
        self.app.publisher().publish_many(
            ("case", ChangeMeta(i, "sql", "db", document_type="case")) for i in ids
        )

    def run_pillow(self) -> int:
        return self.app.get_pillow("cases").run(forever=False)


def make_app(tmp_path: Path, broken: set[str]) -> App:
    app = App(f"sqlite:///{tmp_path}/log.db", f"sqlite:///{tmp_path}/state.db")

    def index(change: Change) -> None:
        if change.id in broken:
            raise RuntimeError(f"search index refused {change.id}")

    app.add_pillow(
        "cases",
        lambda a: a.constructed_pillow(
            "cases",
            ["case"],
            FunctionProcessor(index, "indexer", needs_documents=False),
            max_wait=0.1,
        ),
    )
    app.backend.admin().create_topic("case", 1)
    return app


@pytest.fixture
def start_site(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    servers: list[tuple[uvicorn.Server, threading.Thread, App]] = []

    def start(token: str | None = None, app: App | None = None) -> Site:
        """A dashboard of ``app`` (default: `make_app`'s)."""
        broken: set[str] = set()
        app = app if app is not None else make_app(tmp_path, broken)
        port = free_port()
        web = create_app(app, token=token, sample_interval=0.3)
        server = uvicorn.Server(
            uvicorn.Config(
                web, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_for_port(port)
        web.state.dashboard.live.ready.wait(10)
        servers.append((server, thread, app))
        return Site(app, f"http://127.0.0.1:{port}", broken)

    yield start
    for server, thread, app in servers:
        server.should_exit = True
        thread.join(10)
        app.close()
