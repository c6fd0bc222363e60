"""The dashboard: pillows, lag, throughput, error queue, checkpoint history, live changes."""

from changefeed.web.app import create_app

__all__ = ["create_app"]
