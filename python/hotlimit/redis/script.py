"""The Lua script every Redis call runs, assembled from the files in ``lua/``.

One script serves all four algorithms, so a batch may mix limiters: ``common.lua`` holds the
shared helpers, one file per algorithm defines its decision, and ``main.lua`` reads the batch
and dispatches. The files are concatenated in a fixed order and loaded once per server
(``SCRIPT LOAD``); calls go by SHA-1 (``EVALSHA``) and reload on ``NOSCRIPT``.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files

__all__ = ["SHA", "SOURCE"]

_PARTS = ("common", "token_bucket", "fixed_window", "sliding_window", "sliding_log", "main")


def _source() -> str:
    lua = files("hotlimit.redis").joinpath("lua")
    return "\n".join(lua.joinpath(f"{part}.lua").read_text(encoding="utf-8") for part in _PARTS)


SOURCE = _source()
SHA = hashlib.sha1(SOURCE.encode("utf-8"), usedforsecurity=False).hexdigest()
