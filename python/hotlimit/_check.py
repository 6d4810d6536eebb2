"""Argument checks shared by every mode, with the messages the native core uses too.

Every check raises one of hotlimit's errors (see :mod:`hotlimit._errors`) whose message names
the parameter and shows the bad value. The native core (``rust/py.rs``) checks the arguments
of the calls it answers itself (memory mode's ``hit``, ``acquire``, ...) with the same
messages, word for word, so that a bad call fails the same way in every mode: keep the two in
step (``tests/test_errors.py`` compares them).
"""

from __future__ import annotations

from collections.abc import Sequence

from hotlimit._errors import (
    ArgumentTypeError,
    InvalidArgumentError,
    InvalidKeyError,
    KeyTypeError,
)
from hotlimit._native import MAX_KEY_BYTES

__all__ = ["choice", "flag", "integer", "key_bytes", "seconds", "shown", "type_name"]

#: The most a ManualClock, an ``acquire`` timeout, ... may be: about 570 years in seconds.
MAX_SECONDS = 1.8e10


def type_name(value: object) -> str:
    return type(value).__name__


def shown(value: object) -> str:
    """The value's ``repr`` for a message: cut to 60 characters; never raises (an int too long
    for ``repr`` is shown by its size)."""
    try:
        r = repr(value)
    except Exception:
        if isinstance(value, int):
            return f"<{'negative ' if value < 0 else ''}int of {value.bit_length()} bits>"
        return "<unprintable>"
    return r if len(r) <= 60 else r[:57] + "..."


def wrong_type(name: str, what: str, value: object) -> ArgumentTypeError:
    return ArgumentTypeError(f"{name} must be {what}, not {type_name(value)}: {shown(value)}")


def integer(name: str, value: object, lo: int, hi: int, hi_text: str | None = None) -> int:
    """An int (not a bool) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(name, "an int", value)
    if not lo <= value <= hi:
        raise InvalidArgumentError(f"{name} must be an int from {lo} to {hi_text or hi}, got {shown(value)}")
    return value


def seconds(
    name: str,
    value: object,
    lo: float,
    hi: float,
    bounds: str,
    *,
    what: str = "a number of seconds",
    none: bool = False,
    lo_open: bool = False,
) -> float:
    """A number of seconds (an int or a float, not a bool) within ``bounds`` (its text, as the
    native core writes it). NaN and infinities are out of every range; a huge int is compared
    exactly, never converted (that would raise OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise wrong_type(name, what + (" or None" if none else ""), value)
    if not (lo < value <= hi if lo_open else lo <= value <= hi):
        raise InvalidArgumentError(f"{name} must be {what} in {bounds}, got {shown(value)}")
    return float(value)


def timeout(value: object) -> float | None:
    """``acquire``'s timeout: None, or seconds in [0, 1.8e10]."""
    if value is None:
        return None
    return seconds("timeout", value, 0, MAX_SECONDS, "[0, 1.8e10]", none=True)


def flag(name: str, value: object, none: bool = False) -> bool | None:
    """True or False (or None where allowed); not a truthy value of another type."""
    if value is None and none:
        return None
    if not isinstance(value, bool):
        raise wrong_type(name, "True, False or None" if none else "True or False", value)
    return value


def choice(name: str, value: object, choices: Sequence[str]) -> str:
    """One of a few names."""
    names = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
    if len(choices) > 2:
        names = "one of " + names
    if not isinstance(value, str):
        raise wrong_type(name, names, value)
    if value not in choices:
        raise InvalidArgumentError(f"{name} must be {names}, got {shown(value)}")
    return value


def key_bytes(key: object) -> bytes:
    """The key's bytes (UTF-8 for a str), or the error the native core raises for it."""
    if isinstance(key, str):
        try:
            raw = key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidKeyError(f"key {shown(key)} cannot be encoded as UTF-8 (lone surrogate)") from None
    elif isinstance(key, bytes):
        raw = key
    else:
        raise KeyTypeError(f"key must be str or bytes, not {type_name(key)}: {shown(key)}")
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidKeyError(
            f"key is {len(raw)} bytes long, above the maximum of {MAX_KEY_BYTES}: {shown(key)}"
        )
    return raw
