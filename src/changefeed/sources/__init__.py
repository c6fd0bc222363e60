"""Sources: where stubs come from before they reach the log.

One module per source (the CouchDB ``_changes`` feed and its bridge, SQL application-layer
hooks, the transactional outbox, PostgreSQL CDC), so each can be used and changed on its own.
"""
