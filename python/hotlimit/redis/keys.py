"""Redis key names: ``{prefix}{policy}:{<escaped client key>}``.

The client key is the cluster hash tag, so every limit on one client key lives in one slot
(``hit_many`` over them is a single atomic script call). It is escaped so that it can neither
move the tag nor collide with another key: ``%``, ``{``, ``}``, spaces, control characters and
every byte outside printable ASCII become ``%XX``. Escaping is one-to-one, so distinct client
keys always get distinct Redis keys.
"""

from __future__ import annotations

import re

from hotlimit._errors import InvalidArgumentError, InvalidKeyError, KeyTypeError
from hotlimit._native import MAX_KEY_BYTES

__all__ = ["check_name", "escape"]

_PLAIN = re.compile(rb"[\x21-\x24\x26-\x7a\x7c\x7e]*")  # printable ASCII without % { }
_HEX = [f"%{b:02X}" for b in range(256)]
_NAME = re.compile(r"[\x21-\x7a\x7c\x7e]+")  # printable ASCII without { }


def escape(key: object) -> str:
    """The client key as it appears inside the hash tag."""
    if isinstance(key, str):
        try:
            raw = key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidKeyError(f"key {key!r} cannot be encoded as UTF-8 (lone surrogate)") from None
    elif isinstance(key, bytes):
        raw = key
    else:
        raise KeyTypeError(f"key must be str or bytes, not {type(key).__name__}: {key!r}")
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidKeyError(
            f"key is {len(raw)} bytes long, above the maximum of {MAX_KEY_BYTES}: {key[:40]!r}..."
        )
    if _PLAIN.fullmatch(raw):
        return raw.decode("ascii")
    return "".join(chr(b) if _PLAIN.fullmatch(bytes((b,))) else _HEX[b] for b in raw)


def check_name(what: str, value: object) -> str:
    """A prefix or policy name: printable ASCII without braces (they would move the tag)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidArgumentError(
            f"{what} must be a non-empty string of printable ASCII without spaces or braces, got {value!r}"
        )
    return value
