"""Settings of the example project: SQLite, the notes app and changefeed's Django app."""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-secret"  # noqa: S105 - a demo project
DEBUG = True
ALLOWED_HOSTS: list[str] = []
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = ["changefeed.contrib.django", "notes"]

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "example.sqlite3"}
}

# The changefeed.App that stubs are published through.
CHANGEFEED_APP = "example_project.changefeed_app:app"

# Which models publish stubs, and how a row becomes a stub.
CHANGEFEED_MODELS = {
    "notes.Note": {
        "document_type": "note",
        "domain_field": "domain",
        "version_field": "version",
    },
}
