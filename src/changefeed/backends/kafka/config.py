"""Kafka connection settings from a log URL: ``kafka://host:port,host:port?option=value``.

Query options map to librdkafka properties (``sasl_username`` becomes ``sasl.username``), so
users configure TLS and SASL exactly as the Kafka documentation describes. Only a known set
is accepted: a typo is a clear error now rather than a client that silently ignores it.
Secrets stay in the client configuration and never appear in `KafkaConfig.url` or logs.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

PASSTHROUGH = frozenset(
    {
        "client_id",
        "security_protocol",
        "sasl_mechanism",
        "sasl_mechanisms",
        "sasl_username",
        "sasl_password",
        "sasl_oauthbearer_config",
        "ssl_ca_location",
        "ssl_certificate_location",
        "ssl_key_location",
        "ssl_key_password",
        "ssl_endpoint_identification_algorithm",
        "socket_timeout_ms",
        "socket_keepalive_enable",
        "reconnect_backoff_ms",
        "reconnect_backoff_max_ms",
        "request_timeout_ms",
        "message_timeout_ms",
        "compression_type",
        "linger_ms",
        "batch_num_messages",
        "partitioner",
        "session_timeout_ms",
        "heartbeat_interval_ms",
        "max_poll_interval_ms",
        "partition_assignment_strategy",
        "fetch_wait_max_ms",
        "topic_metadata_refresh_interval_ms",
    }
)
"""URL options handed to the client (underscores become dots)."""

PRODUCER_ONLY = frozenset(
    {"message.timeout.ms", "compression.type", "linger.ms", "batch.num.messages", "partitioner"}
)
CONSUMER_ONLY = frozenset(
    {
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "partition.assignment.strategy",
        "fetch.wait.max.ms",
    }
)

SECRET_OPTIONS = frozenset({"sasl_password", "ssl_key_password", "sasl_oauthbearer_config"})

OWN_OPTIONS = frozenset({"partitions", "replication_factor", "auto_create_topics", "timeout"})
"""URL options changefeed itself uses: defaults for topics it creates, admin timeout (s)."""

CLIENT_LOG = logging.getLogger("changefeed.kafka.client")
"""librdkafka's own log lines (connection failures, retries) go here, not to stderr."""

_HOST = re.compile(r"^[A-Za-z0-9._\-\[\]:]+:\d{1,5}$")


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """Where the brokers are and how to talk to them."""

    bootstrap_servers: str
    client: dict[str, Any] = field(default_factory=dict)
    """librdkafka properties shared by producers, consumers and admin clients."""
    partitions: int = 1
    """Partitions of topics created on first publish."""
    replication_factor: int = -1
    """-1: the broker's default."""
    auto_create_topics: bool = True
    timeout: float = 10.0
    """Seconds to wait for metadata and admin requests."""
    url: str = ""
    """The URL with secrets masked: safe to print."""

    def common(self, client_id: str | None = None, role: str = "admin") -> dict[str, Any]:
        """Client properties for a ``producer``, ``consumer`` or ``admin`` client (each gets
        only the URL options that apply to it, so librdkafka has nothing to warn about)."""
        skip = (PRODUCER_ONLY if role != "producer" else frozenset()) | (
            CONSUMER_ONLY if role != "consumer" else frozenset()
        )
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, "logger": CLIENT_LOG}
        conf.update((k, v) for k, v in self.client.items() if k not in skip)
        if client_id is not None and "client.id" not in self.client:
            conf["client.id"] = client_id
        return conf

    def __repr__(self) -> str:
        return f"KafkaConfig({self.url!r})"


def _bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"option {name} must be true or false, got {value!r}")


def parse_kafka_url(url: str) -> KafkaConfig:
    """Parse and validate a ``kafka://`` URL; raises ValueError with a one-line reason."""
    parts = urlsplit(url)
    if parts.scheme != "kafka":
        raise ValueError(f"not a kafka URL: {_mask(url)!r}")
    hosts = [h.strip() for h in parts.netloc.split(",") if h.strip()]
    if not hosts:
        raise ValueError("kafka URL needs at least one broker: kafka://host:port[,host:port]")
    for host in hosts:
        if not _HOST.match(host):
            raise ValueError(f"bad broker address {host!r} in kafka URL: use host:port")
    if parts.path not in ("", "/"):
        raise ValueError("kafka URL takes no path: kafka://host:port[,host:port]?options")
    client: dict[str, Any] = {}
    own: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key in OWN_OPTIONS:
            own[key] = value
        elif key in PASSTHROUGH:
            client[key.replace("_", ".")] = value
        else:
            allowed = ", ".join(sorted(PASSTHROUGH | OWN_OPTIONS))
            raise ValueError(f"unknown kafka URL option {key!r} (allowed: {allowed})")
    try:
        partitions = int(own.get("partitions", 1))
        replication = int(own.get("replication_factor", -1))
        timeout = float(own.get("timeout", 10.0))
    except ValueError as exc:
        raise ValueError(f"bad kafka URL option: {exc}") from None
    if partitions < 1:
        raise ValueError("option partitions must be at least 1")
    if timeout <= 0:
        raise ValueError("option timeout must be positive")
    return KafkaConfig(
        bootstrap_servers=",".join(hosts),
        client=client,
        partitions=partitions,
        replication_factor=replication,
        auto_create_topics=_bool("auto_create_topics", own.get("auto_create_topics", "true")),
        timeout=timeout,
        url=_mask(url),
    )


def _mask(url: str) -> str:
    """The URL with secret option values replaced by ``***``."""
    base, sep, query = url.partition("?")
    if not sep:
        return url
    out = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        shown = "***" if key in SECRET_OPTIONS else value
        out.append(f"{quote(key, safe='_')}={quote(shown, safe='*/:._-,')}")
    return f"{base}?{'&'.join(out)}"
