"""Reading a data source spec field by field, so every error names the field path at fault.

A report config is user input: a typo must come back as ``columns[2].expression.type:
unknown expression type 'foo'``, not as a KeyError deep in the processor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ReportConfigError(ValueError):
    """A data source config that cannot be used; the message starts with the field path."""

    def __init__(self, path: str, message: str, source: str | None = None) -> None:
        text = f"{path}: {message}" if path else message
        super().__init__(f"{source}: {text}" if source else text)
        self.path = path
        self.message = message
        self.source = source

    def in_source(self, source: str) -> ReportConfigError:
        """The same error, naming the file it came from."""
        return ReportConfigError(self.path, self.message, source)


def child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def type_name(value: object) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"


class Fields:
    """One object of the spec; read fields with `required`/`optional`, then call `done`
    to reject unknown fields (typos)."""

    def __init__(self, spec: object, path: str) -> None:
        if not isinstance(spec, Mapping):
            raise ReportConfigError(path, f"expected an object, got {type_name(spec)}")
        self.spec: Mapping[str, Any] = spec
        self.path = path
        self._read: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.spec

    def path_of(self, key: str) -> str:
        return child(self.path, key)

    def required(self, key: str, kind: type | tuple[type, ...] = object) -> Any:
        if key not in self.spec:
            raise ReportConfigError(self.path_of(key), "required field is missing")
        return self.optional(key, kind)

    def optional(
        self, key: str, kind: type | tuple[type, ...] = object, default: Any = None
    ) -> Any:
        self._read.add(key)
        if key not in self.spec:
            return default
        value = self.spec[key]
        if kind is not object and (
            not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind))
        ):
            raise ReportConfigError(
                self.path_of(key), f"expected {_describe(kind)}, got {type_name(value)}"
            )
        return value

    def string(self, key: str, *, required: bool = True, default: str | None = None) -> Any:
        value = self.required(key, str) if required else self.optional(key, str, default)
        if required and not value:
            raise ReportConfigError(self.path_of(key), "must not be empty")
        return value

    def done(self) -> None:
        for key in self.spec:
            if key not in self._read:
                raise ReportConfigError(self.path_of(str(key)), "unknown field")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "an object",
    Mapping: "an object",
}


def _describe(kind: type | tuple[type, ...]) -> str:
    return " or ".join(_NAMES.get(k, k.__name__) for k in _as_tuple(kind))
