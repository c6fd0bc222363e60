"""A package's public names, imported on first use (PEP 562's module ``__getattr__``).

``import changefeed`` and ``changefeed --help`` would otherwise load SQLAlchemy, the backends
and the processors (most of a second), and a package whose modules need an extra could not
even lend a client-free module (its errors) to code that runs without that extra.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    package: str, where: Mapping[str, str], *, before: Callable[[], object] | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose public names live in the
    modules ``where`` maps them to; ``before`` runs before the first import (a check that the
    extra is installed)."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if before is not None:
            before()
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__
