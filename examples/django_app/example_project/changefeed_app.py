"""The example's changefeed App: the embedded log and state under .changefeed/, and the
notes table as the document store pillows fetch notes from."""

from changefeed import App

app = App("sqlite:///.changefeed/log.db", "sqlite:///.changefeed/state.db")
