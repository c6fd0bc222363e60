"""The Django app: registers the models listed in ``settings.CHANGEFEED_MODELS``.

``CHANGEFEED_MODELS = {"notes.Note": {"document_type": "note", "domain_field": "domain"}}``;
the options are those of `register_model`.
"""

from __future__ import annotations

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class ChangefeedConfig(AppConfig):
    name = "changefeed.contrib.django"
    label = "changefeed"
    verbose_name = "changefeed"

    def ready(self) -> None:
        from changefeed.contrib.django.publishing import register_model

        for label, options in getattr(settings, "CHANGEFEED_MODELS", {}).items():
            try:
                model = apps.get_model(label)
            except (LookupError, ValueError) as exc:
                raise ImproperlyConfigured(f"CHANGEFEED_MODELS: unknown model {label!r}") from exc
            options = dict(options)
            doc_type = options.pop("document_type", None)
            if not doc_type:
                raise ImproperlyConfigured(f"CHANGEFEED_MODELS[{label!r}] needs a document_type")
            register_model(model, doc_type, **options)
