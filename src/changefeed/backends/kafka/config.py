"""Kafka connection settings from a log URL: ``kafka://host:port,host:port?option=value``.

Query options map to librdkafka properties (``sasl_username`` becomes ``sasl.username``), so
users configure TLS and SASL exactly as the Kafka documentation describes. Only a known set
is accepted: a typo is a clear error now rather than a client that silently ignores it.
Secrets stay in the client configuration and never appear in `KafkaConfig.url` or logs.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from changefeed.backends.base import MAX_PARTITIONS, partition_count
from changefeed.identifiers import redact_url
from changefeed.wire import DEFAULT_WIRE_FORMAT, WireFormat, wire_format

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
        "queued_min_messages",
        "queued_max_messages_kbytes",
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
        "queued.min.messages",
        "queued.max.messages.kbytes",
    }
)

SECRET_OPTIONS = frozenset({"sasl_password", "ssl_key_password", "sasl_oauthbearer_config"})

OWN_OPTIONS = frozenset(
    {"partitions", "replication_factor", "auto_create_topics", "timeout", "wire"}
)
"""URL options changefeed itself uses: defaults for topics it creates (``partitions``
1..10000, ``replication_factor`` -1 or 1..32767), admin timeout in seconds (finite, positive,
at most a day), and the stub format publishers write (``wire``: ``changefeed`` or ``hq``)."""

MAX_REPLICATION_FACTOR = 32767
"""Kafka's replication factor is a signed 16-bit field."""

MAX_TIMEOUT = 86400.0
"""A day: longer admin timeouts are typos, and librdkafka takes milliseconds as int32."""

CLIENT_LOG = logging.getLogger("changefeed.kafka.client")
"""librdkafka's own log lines (connection failures, retries) go here, not to stderr."""

_HOST = re.compile(r"^[A-Za-z0-9._\-\[\]:]+:(?P<port>\d{1,5})$")


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
    wire: WireFormat = DEFAULT_WIRE_FORMAT
    """The stub format publishers write unless they are given another."""
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
    if "@" in parts.netloc:
        raise ValueError(
            "kafka URL takes no user:password@ part: use the sasl_username and sasl_password "
            "options"
        )
    hosts = [h.strip() for h in parts.netloc.split(",") if h.strip()]
    if not hosts:
        raise ValueError("kafka URL needs at least one broker: kafka://host:port[,host:port]")
    for host in hosts:
        match = _HOST.match(host)
        if not match:
            raise ValueError(f"bad broker address {host!r} in kafka URL: use host:port")
        if not 1 <= int(match["port"]) <= 65535:
            raise ValueError(f"bad broker port in {host!r}: ports are 1..65535")
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
    partitions = partition_count(
        _int_option(own, "partitions", 1, MAX_PARTITIONS), "option partitions"
    )
    replication = _int_option(own, "replication_factor", -1, MAX_REPLICATION_FACTOR)
    if replication != -1 and not 1 <= replication <= MAX_REPLICATION_FACTOR:
        raise ValueError(
            f"option replication_factor must be -1 (the broker's default) or "
            f"1..{MAX_REPLICATION_FACTOR}, got {replication}"
        )
    try:
        timeout = float(own.get("timeout", 10.0))
    except ValueError:
        raise ValueError(
            f"option timeout must be a number of seconds, got {own['timeout']!r}"
        ) from None
    if not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(
            f"option timeout must be a positive number of seconds up to {MAX_TIMEOUT:.0f}, got {own['timeout']!r}"
        )
    return KafkaConfig(
        bootstrap_servers=",".join(hosts),
        client=client,
        partitions=partitions,
        replication_factor=replication,
        auto_create_topics=_bool("auto_create_topics", own.get("auto_create_topics", "true")),
        timeout=timeout,
        wire=wire_format(own.get("wire")),
        url=_mask(url),
    )


def _int_option(own: dict[str, str], name: str, default: int, most: int) -> int:
    """An integer option, its digits bounded before conversion (nothing beyond 64 bits)."""
    text = own.get(name)
    if text is None:
        return default
    digits = text.strip().lstrip("+-")
    if not digits.isdigit() or len(digits) > len(str(most)):
        raise ValueError(f"option {name} must be a whole number of at most {most}, got {text!r}")
    return int(text)


def _mask(url: str) -> str:
    """The URL with secret option values (and any user:password@) replaced by ``***``."""
    base, sep, query = redact_url(url).partition("?")
    if not sep:
        return base
    out = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        shown = "***" if key in SECRET_OPTIONS else value
        out.append(f"{quote(key, safe='_')}={quote(shown, safe='*/:._-,')}")
    return f"{base}?{'&'.join(out)}"
