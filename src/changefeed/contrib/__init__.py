"""Optional integrations with other frameworks, each installed as an extra
(``pip install changefeed[django]``)."""
