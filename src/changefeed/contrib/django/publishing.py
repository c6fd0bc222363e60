"""``post_save``/``post_delete`` receivers that publish stubs with ``transaction.on_commit``.

The stub is built when the signal fires (the instance still has its id and fields, even on
delete) and published only when the surrounding transaction commits; a rollback drops it.
Like every application-layer hook this loses the stub if the process dies between commit
and publish; use the transactional outbox where that matters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Model
from django.db.models.signals import post_delete, post_save

from changefeed.app import App, ConfigError, load_app
from changefeed.backends.base import Publisher
from changefeed.change import ChangeMeta
from changefeed.sources.app_layer import Attr, ModelSpec, publish_change

log = logging.getLogger("changefeed.contrib.django")


class DjangoPublisher:
    """Registered models and where their stubs go (an App or Publisher; by default the App
    named by ``settings.CHANGEFEED_APP``, loaded on first use)."""

    def __init__(
        self,
        target: App | Publisher | None = None,
        *,
        on_error: Callable[[Exception, ChangeMeta], None] | None = None,
    ) -> None:
        self._target = target
        self.on_error = on_error or self._log_error
        self._specs: dict[type[Model], ModelSpec] = {}

    @property
    def target(self) -> App | Publisher:
        if self._target is None:
            spec = getattr(settings, "CHANGEFEED_APP", None)
            if not spec:
                raise ConfigError("set CHANGEFEED_APP = 'module:attr' in your Django settings")
            self._target = load_app(spec)
        return self._target

    def use(self, target: App | Publisher | None) -> None:
        """Publish through ``target`` from now on (None: back to the settings)."""
        self._target = target

    def register(
        self,
        model: type[Model],
        document_type: str | Callable[[Any], str],
        *,
        id_field: Attr = "pk",
        domain_field: Attr = None,
        version_field: Attr = None,
        subtype_field: Attr = None,
        data_source_name: str | None = None,
        data_source_type: str = "sql",
    ) -> ModelSpec:
        """Publish a stub after every committed save and delete of ``model``;
        ``data_source_name`` defaults to its table name."""
        spec = ModelSpec(
            model,
            document_type,
            data_source_name or model._meta.db_table,
            data_source_type,
            id_field,
            domain_field,
            version_field,
            subtype_field,
        )
        self._specs[model] = spec
        uid = f"changefeed:{model._meta.label}:{id(self)}"
        post_save.connect(self._saved, sender=model, weak=False, dispatch_uid=uid)
        post_delete.connect(self._deleted, sender=model, weak=False, dispatch_uid=uid)
        return spec

    def unregister(self, model: type[Model]) -> None:
        uid = f"changefeed:{model._meta.label}:{id(self)}"
        post_save.disconnect(sender=model, dispatch_uid=uid)
        post_delete.disconnect(sender=model, dispatch_uid=uid)
        self._specs.pop(model, None)

    def _saved(
        self, sender: type[Model], instance: Model, using: str, raw: bool = False, **_: Any
    ) -> None:
        if raw:
            return  # fixture loading (loaddata): not an application change
        self._defer(self._specs[sender].stub(instance), using)

    def _deleted(self, sender: type[Model], instance: Model, using: str, **_: Any) -> None:
        self._defer(self._specs[sender].stub(instance, deleted=True), using)

    def _defer(self, meta: ChangeMeta, using: str) -> None:
        def publish() -> None:
            try:
                publish_change(self.target, meta)
            except Exception as exc:  # noqa: BLE001 - the commit stands; report, do not raise
                self.on_error(exc, meta)

        transaction.on_commit(publish, using=using)

    @staticmethod
    def _log_error(exc: Exception, meta: ChangeMeta) -> None:
        log.error(
            "committed but not published: %s/%s %s: %s: %s",
            meta.data_source_type,
            meta.data_source_name,
            meta.document_id,
            type(exc).__name__,
            exc,
        )


publisher = DjangoPublisher()
"""The default publisher, used by `register_model` and ``CHANGEFEED_MODELS``."""


def register_model(
    model: type[Model], document_type: str | Callable[[Any], str], **options: Any
) -> ModelSpec:
    return publisher.register(model, document_type, **options)


def unregister_model(model: type[Model]) -> None:
    publisher.unregister(model)
