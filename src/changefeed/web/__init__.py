"""The dashboard: pillows, lag, throughput, error queue, checkpoint history, live changes."""

from changefeed.extras import MissingExtraError

try:  # one check for every module of this package
    import starlette  # noqa: F401
except ImportError as exc:
    raise MissingExtraError("web", exc) from exc

from changefeed.web.app import create_app

__all__ = ["create_app"]
