"""`changefeed.rebuild` drives any processor that declares `Rebuildable`, through that
contract alone: a processor of the test's own, whose outputs are dicts, is rebuilt next to
its live output and swapped in, like a report table or an Elasticsearch index."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from changefeed.app import App
from changefeed.change import Change, ChangeMeta
from changefeed.pillow import Pillow
from changefeed.processors import Processor
from changefeed.processors.base import Rebuildable, Shadow
from changefeed.rebuild import ShadowRebuild, rebuild, rebuild_pending, rebuildable
from changefeed.reindex import ReindexError
from changefeed.stores.memory import MemoryDocumentStore


class Writer(Processor):
    """Writes each document's name into one output."""

    def __init__(self, name: str, output: dict[str, str]) -> None:
        self._name = name
        self.output = output

    @property
    def name(self) -> str:
        return self._name

    def process_change(self, change: Change) -> None:
        if change.deleted or change.document is None:
            self.output.pop(change.id, None)
        else:
            self.output[change.id] = change.document["name"]


class DictOutputs(Rebuildable):
    """Outputs by name, one of them live; says what the rebuild asked of it, in order."""

    def __init__(self) -> None:
        self.outputs: dict[str, dict[str, str]] = {"v1": {}}
        self.live = "v1"
        self.calls: list[str] = []
        self.pending: str | None = None

    @property
    def name(self) -> str:
        return "dicts"

    def process_change(self, change: Change) -> None:
        Writer(self.name, self.outputs[self.live]).process_change(change)
        self.calls.append("live write")

    def prepare_rebuild(self) -> None:
        self.calls.append("prepare")

    def shadow_output(self) -> Shadow:
        return NewDict(self, f"v{len(self.outputs) + 1}")

    @contextmanager
    def holding(self) -> Iterator[None]:
        self.calls.append("hold")
        yield
        self.calls.append("release")

    @property
    def pending_rebuild(self) -> str | None:
        return self.pending


class NewDict(Shadow):
    def __init__(self, owner: DictOutputs, target: str) -> None:
        self.owner = owner
        self.target = target
        owner.outputs[target] = {}
        self.processor = Writer(owner.name, owner.outputs[target])

    def swap_in(self) -> None:
        self.owner.calls.append(f"swap {self.target}")
        self.owner.live = self.target
        self.owner.pending = None

    def abandon(self) -> None:
        self.owner.calls.append(f"abandon {self.target}")
        del self.owner.outputs[self.target]


class Cache(Processor):
    """Keeps no output to rebuild: not `Rebuildable`, the default."""

    def process_change(self, change: Change) -> None:
        pass


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    app = App(f"sqlite:///{tmp_path / 'log.db'}", f"sqlite:///{tmp_path / 'state.db'}")
    store = MemoryDocumentStore("docs")
    app.document_stores.register(store)
    for doc_id, name in (("a", "Ann"), ("b", "Bob")):
        version = store.save(doc_id, {"name": name})
        app.publish(ChangeMeta(doc_id, "memory", "docs", version=version), "people")
    yield app
    app.close()


def add_pillow(app: App, processors: list[Processor]) -> None:
    def make(a: App) -> Pillow:
        return a.constructed_pillow("people", ["people"], processors)

    app.add_pillow("people", make)


def test_a_rebuildable_processor_is_rebuilt_through_the_contract(app: App) -> None:
    dicts = DictOutputs()
    dicts.outputs["v1"]["gone"] = "stale"
    add_pillow(app, [dicts, Cache()])
    assert rebuildable(app.get_pillow("people")) == [dicts]

    (result,) = rebuild(app, "people")

    assert (result.processor, result.target, result.documents) == ("dicts", "v2", 2)
    assert dicts.live == "v2"
    assert dicts.outputs["v2"] == {"a": "Ann", "b": "Bob"}
    # Prepared first; the last replay and the swap under the hold; the replay from the
    # mark through the live processor after it (nothing new was published: no writes).
    assert dicts.calls == ["prepare", "hold", "swap v2", "release"]


def test_a_pillow_with_nothing_rebuildable_is_refused(app: App) -> None:
    add_pillow(app, [Cache()])
    with pytest.raises(ReindexError, match="no report table or Elasticsearch index to rebuild"):
        rebuild(app, "people")


def test_an_interrupted_rebuild_abandons_its_shadow(app: App) -> None:
    dicts = DictOutputs()
    add_pillow(app, [dicts])
    job = ShadowRebuild(app.get_pillow("people"), dicts)
    job.stop()
    result = job.run()
    assert result.interrupted
    assert dicts.live == "v1" and list(dicts.outputs) == ["v1"]
    assert dicts.calls == ["abandon v2"]


def test_a_rebuild_that_cannot_resume_says_so(app: App) -> None:
    dicts = DictOutputs()
    add_pillow(app, [dicts])
    job = ShadowRebuild(app.get_pillow("people"), dicts)
    with pytest.raises(ReindexError, match="a rebuild of dicts cannot resume"):
        job.run(resume=True)
    assert list(dicts.outputs) == ["v1"]


def test_a_pending_rebuild_is_done_by_bootstrap(app: App) -> None:
    dicts = DictOutputs()
    add_pillow(app, [dicts])
    pillow = app.get_pillow("people")
    assert rebuild_pending(pillow) == []
    dicts.pending = "columns changed"
    (result,) = rebuild_pending(pillow)
    assert (result.target, dicts.live, dicts.pending) == ("v2", "v2", None)
