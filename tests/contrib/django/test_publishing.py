"""changefeed.contrib.django with the example app: stubs after commit, none after rollback,
deletions, and registration from settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from changefeed.app import App, ConfigError
from changefeed.backends.base import Publisher
from changefeed.change import ChangeMeta
from changefeed.contrib.django import DjangoPublisher, publisher, register_model, unregister_model
from changefeed.topics import TopicRouter


@pytest.fixture
def app(tmp_path: Path, note_table: None) -> Iterator[App]:
    from notes.models import Note

    a = App(
        f"sqlite:///{tmp_path}/log.db",
        f"sqlite:///{tmp_path}/state.db",
        router=TopicRouter({"note": "notes"}),
    )
    publisher.use(a)
    yield a
    publisher.use(None)
    Note.objects.all().delete()
    a.close()


def _log(app: App) -> list[ChangeMeta]:
    feed = app.change_feed(app.router.topics)
    out = [
        c.metadata
        for c in feed.iter_changes(dict.fromkeys(feed.topic_partitions(), 0))
        if c is not None and c.metadata is not None
    ]
    feed.close()
    return out


def test_save_publishes_after_commit(app: App) -> None:
    from notes.models import Note

    with transaction.atomic():
        note = Note.objects.create(title="a", domain="acme")
        note.title = "b"
        note.save()
        assert _log(app) == []  # nothing before the commit
    stubs = _log(app)
    assert [(m.document_id, m.version) for m in stubs] == [(str(note.pk), 1), (str(note.pk), 2)]
    meta = stubs[-1]
    assert (meta.data_source_type, meta.data_source_name) == ("sql", "notes_note")
    assert (meta.document_type, meta.domain, meta.is_deletion) == ("note", "acme", False)
    # Outside an atomic block Django autocommits: the stub follows at once.
    Note.objects.create(title="c", domain="acme")
    assert len(_log(app)) == 3


def test_rollback_publishes_nothing(app: App) -> None:
    from notes.models import Note

    with pytest.raises(RuntimeError), transaction.atomic():
        Note.objects.create(title="never", domain="acme")
        raise RuntimeError("abort")
    assert Note.objects.count() == 0
    assert _log(app) == []


def test_delete_publishes_a_deletion(app: App) -> None:
    from notes.models import Note

    note = Note.objects.create(title="a", domain="acme")
    pk = note.pk
    with transaction.atomic():
        note.delete()
    last = _log(app)[-1]
    assert (last.document_id, last.is_deletion) == (str(pk), True)


def test_publish_errors_are_reported_not_raised(app: App) -> None:
    from notes.models import Note

    class Down(Publisher):
        def publish(self, topic: str, meta: ChangeMeta) -> None:
            raise ConnectionError("log is down")

    failed: list[str] = []
    down = DjangoPublisher(Down(), on_error=lambda exc, meta: failed.append(meta.document_id))
    unregister_model(Note)
    down.register(Note, "note")
    try:
        note = Note.objects.create(title="a", domain="acme")
    finally:
        down.unregister(Note)
        register_model(Note, "note", domain_field="domain", version_field="version")
    assert failed == [str(note.pk)]
    assert Note.objects.filter(pk=note.pk).exists()


def test_settings_errors_are_clear(app: App, settings_override: None) -> None:
    from django.conf import settings

    from changefeed.contrib.django.apps import ChangefeedConfig

    publisher.use(None)
    with pytest.raises(ConfigError, match="CHANGEFEED_APP"):
        publisher.target  # noqa: B018
    settings.CHANGEFEED_MODELS = {"notes.Nope": {"document_type": "x"}}
    import changefeed.contrib.django as module

    with pytest.raises(ImproperlyConfigured, match="unknown model 'notes.Nope'"):
        ChangefeedConfig("changefeed.contrib.django", module).ready()
    settings.CHANGEFEED_MODELS = {"notes.Note": {}}
    with pytest.raises(ImproperlyConfigured, match="needs a document_type"):
        ChangefeedConfig("changefeed.contrib.django", module).ready()


@pytest.fixture
def settings_override() -> Iterator[None]:
    from django.conf import settings

    saved = settings.CHANGEFEED_MODELS
    yield
    settings.CHANGEFEED_MODELS = saved
