"""Values kept out of the history: a reference to an object in the store's value bucket.

A value (an output, an input) whose event would not fit in one NATS message is written to
the JetStream object store first and the event carries `{"$ref": "sha256:<hex>", "size": N}`
in its place: the sha256 of the value's JSON and its length. The core never reads the bytes:
to a fold a reference is an opaque value like any other, so `fold`/`replay` stay
deterministic and a history written before references folds exactly as it did. A template
may pass a referenced value on whole (the worker reads it back before its handler runs); it
cannot read into it (`template.lookup` says so). Pure: hashing only, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

REF_KEY = "$ref"
MAX_VALUE_BYTES = 64 * 1024 * 1024  # one value's JSON, at most, when kept in the object store
MAX_VALUE_TEXT = "64 MB"
_NAME = re.compile(r"sha256:[0-9a-f]{64}\Z")


def is_ref(value: Any) -> bool:
    """Whether `value` is a reference to a stored value (exactly the two keys, a sha256 name)."""
    return (
        type(value) is dict
        and len(value) == 2
        and type(value.get("size")) is int
        and isinstance(value.get(REF_KEY), str)
        and _NAME.match(value[REF_KEY]) is not None
    )


def ref_of(data: bytes) -> dict[str, Any]:
    """The reference naming `data` (a value's JSON) by its content."""
    return {REF_KEY: "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def refs_in(value: Any) -> list[dict[str, Any]]:
    """Every reference inside `value` (nested anywhere in lists and dicts), each name once."""
    found: dict[str, dict[str, Any]] = {}
    _collect(value, found)
    return list(found.values())


def _collect(value: Any, found: dict[str, dict[str, Any]]) -> None:
    if type(value) is dict:
        if is_ref(value):
            found.setdefault(value[REF_KEY], value)
            return
        for item in value.values():
            _collect(item, found)
    elif type(value) is list:
        for item in value:
            _collect(item, found)


def replace_refs(value: Any, values: Mapping[str, Any]) -> Any:
    """`value` with each reference replaced by `values[name]` (a value not given stays a reference)."""
    if type(value) is dict:
        if is_ref(value):
            return values.get(value[REF_KEY], value)
        return {key: replace_refs(item, values) for key, item in value.items()}
    if type(value) is list:
        return [replace_refs(item, values) for item in value]
    return value
