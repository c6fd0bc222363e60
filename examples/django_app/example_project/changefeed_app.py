"""The example's changefeed App: the embedded log and state under .changefeed/.

The example only publishes: each stub names data source ``sql``/``notes_note`` (the model's
table), and no document store is registered for it. A pillow that fetches notes needs one
registered under that name (``app.document_stores.register``)."""

from changefeed import App

app = App("sqlite:///.changefeed/log.db", "sqlite:///.changefeed/state.db")
