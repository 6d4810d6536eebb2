"""Redis key names: ``{prefix}{policy}:{<escaped client key>}``.

The client key is the cluster hash tag, so every limit on one client key lives in one slot
(``hit_many`` over them is a single atomic script call). It is escaped so that it can neither
move the tag nor collide with another key: ``%``, ``{``, ``}``, spaces, control characters and
every byte outside printable ASCII become ``%XX``. Escaping is one-to-one, so distinct client
keys always get distinct Redis keys.
"""

from __future__ import annotations

import re

from hotlimit._check import key_bytes, shown, wrong_type
from hotlimit._errors import InvalidArgumentError

__all__ = ["check_name", "escape"]

_PLAIN = re.compile(rb"[\x21-\x24\x26-\x7a\x7c\x7e]*")  # printable ASCII without % { }
_HEX = [f"%{b:02X}" for b in range(256)]
_NAME = re.compile(r"[\x21-\x7a\x7c\x7e]+")  # printable ASCII without { }


def escape(key: object) -> str:
    """The client key as it appears inside the hash tag. A bad key raises the error the native
    core raises for it in memory mode (the same class and message)."""
    raw = key_bytes(key)
    if _PLAIN.fullmatch(raw):
        return raw.decode("ascii")
    return "".join(chr(b) if _PLAIN.fullmatch(bytes((b,))) else _HEX[b] for b in raw)


def check_name(what: str, value: object) -> str:
    """A prefix or policy name: printable ASCII without braces (they would move the tag)."""
    expected = "a non-empty string of printable ASCII without spaces or braces"
    if not isinstance(value, str):
        raise wrong_type(what, expected, value)
    if not _NAME.fullmatch(value):
        raise InvalidArgumentError(f"{what} must be {expected}, got {shown(value)}")
    return value
