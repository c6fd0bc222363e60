"""The outbox relay and CDC publish into Kafka (noida-db) exactly as into the embedded log."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql

from changefeed.backends import Backend
from changefeed.change import ChangeMeta
from changefeed.sources.outbox import Outbox, OutboxRelay, write_change
from changefeed.sources.postgres_cdc import CDCTable, PostgresCDC, create_slot, drop_slot
from tests.harness.kafka import read_ids

pytestmark = pytest.mark.slow  # server-heavy end to end; `pytest -m "not slow"` skips it


def test_outbox_relay_into_kafka(pg_url: str, kafka_backend: Backend) -> None:
    topic = f"outbox-{uuid.uuid4().hex[:8]}"
    kafka_backend.admin().create_topic(topic, 1)
    engine = sa.create_engine(pg_url)
    Outbox().create(engine)
    with engine.begin() as conn:
        for i in range(20):
            write_change(conn, ChangeMeta(f"k{i:02d}", "sql", "docs"), topic=topic)
    publisher = kafka_backend.publisher()
    try:
        assert OutboxRelay(engine, publisher).run(forever=False) == 20
    finally:
        publisher.close()
        engine.dispose()
    assert read_ids(kafka_backend, topic) == [f"k{i:02d}" for i in range(20)]


def test_cdc_into_kafka(pg_dsn: str, kafka_backend: Backend) -> None:
    topic = f"cdc-{uuid.uuid4().hex[:8]}"
    kafka_backend.admin().create_topic(topic, 1)
    slot = f"k_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(
                sql.Identifier(conn.info.dbname)
            )
        )
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, v text)")
        create_slot(pg_dsn, slot)
        conn.execute("SET synchronous_commit = on")
        conn.execute("INSERT INTO docs SELECT i, 'x' FROM generate_series(1, 20) i")
        conn.execute("DELETE FROM docs WHERE id = 20")
    publisher = kafka_backend.publisher()
    try:
        cdc = PostgresCDC(pg_dsn, slot, [CDCTable("docs", topic=topic)], publisher)
        assert cdc.run(forever=False) == 21
    finally:
        publisher.close()
        drop_slot(pg_dsn, slot)
    assert read_ids(kafka_backend, topic) == [str(i) for i in range(1, 21)] + ["20"]
