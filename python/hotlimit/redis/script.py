"""The Lua script every Redis call runs, assembled from the files in ``lua/``.

One script serves every algorithm, so a batch may mix limiters. ``common.lua`` holds the
shared helpers; each algorithm of the native registry (``_native.ALGORITHMS``) has its own file,
``lua/<name>.lua``, a block of code that becomes one branch of the if-chain on the algorithm's
code that ``main.lua`` (which reads the batch and decides each op in one loop) includes where
it says ``--@ algorithms``. Splicing the blocks into the loop, rather than defining a function
per algorithm (or one to decide an op), saves creating closures on every call: Redis runs the
whole script body each time. The result is loaded once per server (``SCRIPT LOAD``);
calls go by SHA-1 (``EVALSHA``) and reload on ``NOSCRIPT``.
"""

from __future__ import annotations

import hashlib
import math
import struct
from importlib.resources import files

from hotlimit import _native

__all__ = ["ALGORITHM_FILES", "SHA", "SOURCE", "STATE_FORMATS", "decode_state"]

#: One Lua file per algorithm of the native registry, named as the algorithm.
ALGORITHM_FILES = tuple(a.name for a in _native.ALGORITHMS)


def _read(name: str) -> str:
    return files("hotlimit.redis").joinpath("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _dispatch() -> str:
    branches = [
        f"  {'if' if n == 0 else 'elseif'} algo == '{a.code}' then\n{_read(a.name)}"
        for n, a in enumerate(_native.ALGORITHMS)
    ]
    return (
        "\n".join(branches) + "\n  else\n    error('hotlimit: unknown algorithm ' .. tostring(algo))\n  end"
    )


def _source() -> str:
    main = _read("main")
    if main.count("--@ algorithms") != 1:
        raise RuntimeError("main.lua must say `--@ algorithms` once, where the dispatch goes")
    body = main.replace("--@ algorithms", _dispatch().lstrip())
    return _read("common") + "\n" + body


SOURCE = _source()
SHA = hashlib.sha1(SOURCE.encode("utf-8"), usedforsecurity=False).hexdigest()


#: How the script stores each algorithm's state in its key's string value: little-endian doubles
#: (exact for the integers they hold). sliding_log keeps a sorted set instead.
STATE_FORMATS = {
    "token_bucket": struct.Struct("<ddd"),  # base second, TAT in ns after it, the TTL's end in ms
    "fixed_window": struct.Struct("<dd"),  # window number, count
    "sliding_window": struct.Struct("<ddd"),  # window number, previous count, current count
}


def decode_state(algorithm: str, raw: bytes | None) -> tuple[int, ...] | None:
    """The numbers a key's value holds (see ``STATE_FORMATS``), or None for no value or one that
    is not this algorithm's state (the script treats such a value as no state)."""
    fmt = STATE_FORMATS[algorithm]
    if raw is None or len(raw) != fmt.size:
        return None
    values = fmt.unpack(raw)
    if not all(math.isfinite(x) for x in values):
        return None
    return tuple(int(x) for x in values)
