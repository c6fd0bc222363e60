"""The index behind the alias: names, bootstrap, and a new index swapped in by a reindex.

The pillow writes through an alias; bootstrap creates the concrete index
``<alias>_<version or settings hash>`` with its settings and mappings and points the alias at
it, so a later reindex can build a new index (``<index>_v<N>``) and swap the alias to it
without readers ever seeing none.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from elasticsearch import BadRequestError, Elasticsearch

from changefeed.processors.elastic.errors import ElasticBootstrapError

log = logging.getLogger("changefeed.processors.elastic")

_INVALID_INDEX_CHARS = re.compile(r'[\\/*?"<>| ,#:A-Z]')


def index_name(name: object, what: str = "index name") -> str:
    """An Elasticsearch index or alias name: lowercase, no separators or wildcards."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or name[0] in "-_+"
        or _INVALID_INDEX_CHARS.search(name)
        or len(name.encode()) > 255
    ):
        raise ValueError(
            f"invalid {what} {name!r}: use lowercase letters, digits, '-', '_' and '.', "
            "not starting with '-', '_' or '+', at most 255 bytes"
        )
    return name


def is_version(index: str, name: str) -> bool:
    """True for ``index`` or one of its rebuilt versions ``<index>_v<N>``."""
    rest = name.removeprefix(index)
    return rest == "" or (rest.startswith("_v") and rest[2:].isdigit())


def alias_indexes(client: Elasticsearch, alias: str) -> list[str]:
    """The indexes ``alias`` points at now (none when it does not exist)."""
    found = client.options(ignore_status=404).indices.get_alias(name=alias)
    if found.meta.status != 200 or not found.body:
        return []
    return sorted(found.body)


def ensure_index(
    client: Elasticsearch,
    alias: str,
    index: str,
    settings: Mapping[str, Any],
    mappings: Mapping[str, Any],
    is_current: Callable[[str], bool],
) -> None:
    """Create ``index`` behind ``alias`` unless the alias exists; idempotent and safe to race
    (an index another process just created is pointed at). An alias pointing elsewhere is
    left alone with a warning: only a reindex moves it (`is_current` tells which are ours)."""
    indices = client.indices
    found = client.options(ignore_status=404).indices.get_alias(name=alias)
    if found.meta.status == 200 and found.body:
        current = sorted(found.body)
        if not any(is_current(name) for name in current):
            log.warning(
                "alias %s points to %s, not to %s (settings or mappings changed): "
                "reindex to move it",
                alias,
                ", ".join(current),
                index,
            )
        return
    if indices.exists(index=alias):
        raise ElasticBootstrapError(
            f"{alias!r} is an index, not an alias: reindex it into {index!r} "
            "or choose another alias"
        )
    if not indices.exists(index=index):
        try:
            indices.create(
                index=index,
                settings=settings or None,
                mappings=mappings or None,
                aliases={alias: {}},
            )
            log.info("created index %s behind alias %s", index, alias)
            return
        except BadRequestError as exc:
            if exc.error != "resource_already_exists_exception":
                raise ElasticBootstrapError(f"cannot create index {index!r}: {exc}") from exc
    indices.put_alias(index=index, name=alias)
    log.info("pointed alias %s at existing index %s", alias, index)


def create_next_index(
    client: Elasticsearch,
    alias: str,
    index: str,
    settings: Mapping[str, Any],
    mappings: Mapping[str, Any],
) -> str:
    """Create the next versioned index (``index``, then ``<index>_v2``, ...) that no alias
    points at; returns its name. An index of that name left behind by an abandoned rebuild
    (behind no alias) is deleted first."""
    current = set(alias_indexes(client, alias))
    indices = client.indices
    n = 1
    while True:
        name = index if n == 1 else index_name(f"{index}_v{n}", "index name")
        n += 1
        if name in current:
            continue
        if indices.exists(index=name):
            aliases = client.indices.get_alias(index=name).body.get(name, {})
            if aliases.get("aliases"):
                continue
            indices.delete(index=name)
        indices.create(index=name, settings=settings or None, mappings=mappings or None)
        return name


def swap_alias(client: Elasticsearch, alias: str, index: str) -> list[str]:
    """Point ``alias`` at ``index`` alone in one ``update_aliases`` call (searches through
    the alias answer from the old index or the new one, never from none), then delete the
    indexes it pointed at before; returns their names."""
    client.indices.refresh(index=index)
    old = [name for name in alias_indexes(client, alias) if name != index]
    actions: list[Mapping[str, Any]] = [{"remove": {"index": name, "alias": alias}} for name in old]
    actions.append({"add": {"index": index, "alias": alias}})
    client.indices.update_aliases(actions=actions)
    for name in old:
        client.options(ignore_status=404).indices.delete(index=name)
    log.info("alias %s now points at %s (deleted %s)", alias, index, ", ".join(old))
    return old
