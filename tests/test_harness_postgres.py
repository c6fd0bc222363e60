import sqlalchemy as sa


def test_own_cluster_has_logical_decoding(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SHOW wal_level")).scalar() == "logical"
    engine.dispose()
