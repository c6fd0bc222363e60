"""A test app with a Couch bridge registered as docs/couchdb.md shows (``add_couch_bridge``).

``COUCH_BRIDGE_URL``: the database URL (a closed port serves tests that only look at
checkpoints and status: the bridge reports its CouchDB as unreachable); the log and state
come from ``CHANGEFEED_LOG`` and ``CHANGEFEED_STATE``.
"""

from __future__ import annotations

import os

from changefeed import App
from changefeed.sources.couch_bridge import add_couch_bridge

app = App()
add_couch_bridge(app, os.environ["COUCH_BRIDGE_URL"])
