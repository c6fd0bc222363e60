"""``python -m changefeed``: the same as the ``changefeed`` command."""

from changefeed.cli import main

main()
