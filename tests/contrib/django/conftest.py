"""Django configured in-test: the example project's notes app on a temporary SQLite file,
tables made with the schema editor (no migrations in the example)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

django = pytest.importorskip("django", reason="Django is the optional 'django' extra")

from django.conf import settings  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "django_app"

if not settings.configured:
    sys.path.insert(0, str(EXAMPLE))
    settings.configure(
        INSTALLED_APPS=["changefeed.contrib.django", "notes"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(Path(tempfile.mkdtemp(prefix="changefeed-django-")) / "db.sqlite3"),
            }
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        USE_TZ=True,
        CHANGEFEED_MODELS={
            "notes.Note": {
                "document_type": "note",
                "domain_field": "domain",
                "version_field": "version",
            }
        },
    )
    django.setup()


@pytest.fixture(scope="session")
def note_table() -> None:
    from django.db import connection
    from notes.models import Note

    with connection.schema_editor() as editor:
        editor.create_model(Note)
