"""A test app whose processor presses Ctrl-C on its own process (SIGINT) after its first
batch, so a test can interrupt ``changefeed reindex`` at a known point through the real CLI.

``INTERRUPTS_DOCS``: the SQL document store's URL (table ``cases``); ``INTERRUPTS_ON``: ``1``
to interrupt (anything else runs through); the log and state come from ``CHANGEFEED_LOG`` and
``CHANGEFEED_STATE``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

from changefeed import App, BulkProcessor, Change, ChangeFailure, Pillow, SQLDocumentStore

app = App()
app.document_stores.register(SQLDocumentStore(os.environ["INTERRUPTS_DOCS"], "cases"))


class InterruptOnce(BulkProcessor):
    """Processes nothing; the first batch it sees sends SIGINT to this process."""

    def __init__(self) -> None:
        self.batches = 0

    def process_changes(self, changes: Sequence[Change]) -> list[ChangeFailure]:
        self.batches += 1
        if self.batches == 1 and os.environ.get("INTERRUPTS_ON") == "1":
            os.kill(os.getpid(), signal.SIGINT)
        return []


@app.pillow("interrupted")
def interrupted(app: App) -> Pillow:
    return app.constructed_pillow("interrupted", ["case"], InterruptOnce())
