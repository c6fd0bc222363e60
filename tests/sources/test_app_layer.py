"""Application-layer publishing: `publish_change` and SQLAlchemy session hooks, on SQLite
data and the embedded log; and the weakness the outbox and CDC exist for (a process killed
between commit and publish loses the stub)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from changefeed.app import App
from changefeed.backends.base import Publisher
from changefeed.change import ChangeMeta
from changefeed.sources.app_layer import SessionPublisher, publish_change, publish_changes
from changefeed.topics import TopicRouter


class Base(DeclarativeBase):
    pass


class Case(Base):
    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(primary_key=True)
    domain: Mapped[str] = mapped_column(sa.String(50))
    kind: Mapped[str] = mapped_column(sa.String(50), default="patient")
    name: Mapped[str] = mapped_column(sa.String(50))
    version: Mapped[int] = mapped_column(nullable=False)
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012


class Audit(Base):
    """Not registered: never published."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(50))


@pytest.fixture
def Session(tmp_path: Path, app: App) -> Iterator[sessionmaker[sa.orm.Session]]:  # noqa: N802
    engine = sa.create_engine(f"sqlite:///{tmp_path}/data.db")
    Base.metadata.create_all(engine)
    factory = sessionmaker(engine)
    hooks = SessionPublisher(app)
    hooks.register(Case, "case", domain_attr="domain", version_attr="version", subtype_attr="kind")
    hooks.install(factory)
    yield factory
    hooks.uninstall()
    engine.dispose()


def _log(app: App) -> list[tuple[str, ChangeMeta]]:
    feed = app.change_feed(app.router.topics)
    out = []
    for change in feed.iter_changes(dict.fromkeys(feed.topic_partitions(), 0)):
        if change is not None and change.metadata is not None:
            out.append((change.topic, change.metadata))
    feed.close()
    return out


def test_commit_publishes_one_stub_per_changed_object(app: App, Session: sessionmaker) -> None:  # noqa: N803
    with Session() as session:
        session.add_all(
            [Case(domain="acme", name="a"), Case(domain="acme", name="b"), Audit(text="x")]
        )
        session.flush()  # ids exist now, nothing is published yet
        assert _log(app) == []
        session.commit()
    stubs = _log(app)
    assert [(t, m.document_id) for t, m in stubs] == [("case", "1"), ("case", "2")]
    meta = stubs[0][1]
    assert (meta.data_source_type, meta.data_source_name) == ("sql", "cases")
    assert (meta.domain, meta.document_subtype, meta.version, meta.is_deletion) == (
        "acme",
        "patient",
        1,
        False,
    )
    assert meta.publish_timestamp is not None


def test_updates_deletes_and_unchanged_objects(app: App, Session: sessionmaker) -> None:  # noqa: N803
    with Session() as session:
        session.add_all([Case(id=1, domain="d", name="a"), Case(id=2, domain="d", name="b")])
        session.commit()
    with Session() as session:
        one, two = session.get(Case, 1), session.get(Case, 2)
        assert one is not None and two is not None
        one.name = "a2"
        session.flush()
        one.name = "a3"  # two flushes in one transaction: one stub, the latest
        two.name = "b"  # set to the same value: not modified, no stub
        session.commit()
    with Session() as session:
        session.delete(session.get(Case, 2))
        session.commit()
    stubs = [m for _, m in _log(app)][2:]
    assert [(m.document_id, m.version, m.is_deletion) for m in stubs] == [
        ("1", 3, False),
        ("2", 1, True),
    ]


def test_rollback_publishes_nothing(app: App, Session: sessionmaker) -> None:  # noqa: N803
    with Session() as session:
        session.add(Case(id=10, domain="d", name="never"))
        session.flush()
        session.rollback()
        session.add(Case(id=11, domain="d", name="kept"))
        session.commit()
    assert [m.document_id for _, m in _log(app)] == ["11"]
    with Session() as session:
        assert [c.name for c in session.scalars(sa.select(Case))] == ["kept"]


def test_savepoints_discard_only_what_they_rolled_back(app: App, Session: sessionmaker) -> None:  # noqa: N803
    with Session() as session:
        session.add(Case(id=20, domain="d", name="outer"))
        session.flush()
        with session.begin_nested():  # released: its stub waits for the outer commit
            session.add(Case(id=21, domain="d", name="kept savepoint"))
        assert _log(app) == []
        undone = session.begin_nested()
        session.add(Case(id=22, domain="d", name="rolled back"))
        session.get(Case, 20).name = "outer, renamed in a rolled-back savepoint"  # type: ignore[union-attr]
        with session.begin_nested():  # released inside the savepoint that is rolled back
            session.add(Case(id=23, domain="d", name="inner"))
        session.flush()
        undone.rollback()
        session.commit()
    published = {m.document_id: m.version for _, m in _log(app)}
    assert published == {"20": 1, "21": 1}  # 20 as the outer transaction left it
    with Session() as session:
        assert sorted(c.id for c in session.scalars(sa.select(Case))) == [20, 21]


def test_rolled_back_outer_transaction_discards_released_savepoints(
    app: App,
    Session: sessionmaker,  # noqa: N803
) -> None:
    with Session() as session:
        with session.begin_nested():
            session.add(Case(id=30, domain="d", name="released, then rolled back"))
        session.rollback()
        session.add(Case(id=31, domain="d", name="kept"))
        session.commit()
    assert [m.document_id for _, m in _log(app)] == ["31"]


def test_publish_errors_do_not_undo_the_commit(tmp_path: Path) -> None:
    class Down(Publisher):
        def publish(self, topic: str, meta: ChangeMeta) -> None:
            raise ConnectionError("log is down")

    engine = sa.create_engine(f"sqlite:///{tmp_path}/data.db")
    Base.metadata.create_all(engine)
    factory = sessionmaker(engine)
    errors: list[tuple[Exception, list[str]]] = []
    hooks = SessionPublisher(
        Down(), on_error=lambda e, s: errors.append((e, [m.document_id for m in s]))
    )
    hooks.register(Case, lambda c: f"case-{c.kind}")
    hooks.install(factory)
    with factory() as session:
        session.add(Case(domain="d", name="x"))
        session.commit()
    assert [(str(e), ids) for e, ids in errors] == [("log is down", ["1"])]
    with factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Case)) == 1
    hooks.uninstall()


def test_publish_change_through_app_or_publisher(app: App) -> None:
    assert publish_change(app, ChangeMeta("f1", "sql", "forms", document_type="form")) == "form"
    router = TopicRouter({"case": "cases-topic"})
    publisher = app.backend.publisher()
    assert (
        publish_change(publisher, ChangeMeta("c1", "sql", "c", document_type="case"), router=router)
        == "cases-topic"
    )
    publish_change(publisher, ChangeMeta("x", "sql", "c"), topic="meta")
    publish_changes(app, [ChangeMeta("c2", "sql", "c", document_type="case")])
    publisher.close()
    assert sorted((t, m.document_id) for t, m in _log(app)) == [
        ("case", "c2"),
        ("form", "f1"),
        ("meta", "x"),
    ]
    feed = app.change_feed(["cases-topic"])
    (change,) = [c for c in feed.iter_changes(dict.fromkeys(feed.topic_partitions(), 0)) if c]
    assert change.id == "c1"
    feed.close()


_WRITER = textwrap.dedent("""
    import os, sys, time
    import sqlalchemy as sa
    from sqlalchemy import event
    from sqlalchemy.orm import sessionmaker
    from changefeed.app import App
    from changefeed.sources.app_layer import SessionPublisher
    from tests.sources.test_app_layer import Base, Case

    tmp = sys.argv[1]
    app = App(f"sqlite:///{tmp}/log.db", f"sqlite:///{tmp}/state.db")
    engine = sa.create_engine(f"sqlite:///{tmp}/data.db")
    Base.metadata.create_all(engine)
    Session = sessionmaker(engine)
    hooks = SessionPublisher(app)
    hooks.register(Case, "case")
    hooks.install(Session)

    def between_commit_and_publish(session):
        # Runs before the publishing hook: the row is committed, the stub not yet sent.
        print("committed", flush=True)
        time.sleep(float(os.environ["PAUSE"]))

    event.listen(Session, "after_commit", between_commit_and_publish, insert=True)
    with Session() as session:
        session.add(Case(id=int(sys.argv[2]), domain="d", name="x"))
        session.commit()
    app.close()
    print("published", flush=True)
""")


def _writer(tmp_path: Path, doc_id: int, pause: float) -> subprocess.Popen[str]:
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PAUSE": str(pause),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), str(doc_id)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )


def test_killed_between_commit_and_publish_loses_the_change(app: App, tmp_path: Path) -> None:
    """The weakness of app-layer publishing, shown: the row survives, its stub does not.
    (The transactional outbox and CDC close this gap.)"""
    ok = _writer(tmp_path, 1, 0)
    out, _ = ok.communicate(timeout=60)
    assert ok.returncode == 0 and out.split() == ["committed", "published"]

    victim = _writer(tmp_path, 2, 60)
    try:
        assert victim.stdout is not None and victim.stdout.readline().strip() == "committed"
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.kill()
        victim.wait(10)
    assert victim.returncode == -signal.SIGKILL

    engine = sa.create_engine(f"sqlite:///{tmp_path}/data.db")
    with engine.connect() as conn:
        assert [r[0] for r in conn.execute(sa.select(Case.id).order_by(Case.id))] == [1, 2]
    engine.dispose()
    assert [m.document_id for _, m in _log(app)] == ["1"]  # case 2's change is lost
