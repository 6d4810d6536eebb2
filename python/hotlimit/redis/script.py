"""The Lua script every Redis call runs, assembled from the files in ``lua/``.

One script serves all four algorithms, so a batch may mix limiters. ``common.lua`` holds the
shared helpers; each algorithm has its own file, a block of code that ``main.lua`` (which reads
the batch and dispatches) includes where it says ``--@ <name>``. Splicing the blocks in, rather
than defining a function per algorithm, saves creating those closures on every call (Redis
runs the whole script body each time). The result is loaded once per server (``SCRIPT LOAD``);
calls go by SHA-1 (``EVALSHA``) and reload on ``NOSCRIPT``.
"""

from __future__ import annotations

import hashlib
import re
from importlib.resources import files

__all__ = ["ALGORITHM_FILES", "SHA", "SOURCE"]

ALGORITHM_FILES = ("token_bucket", "fixed_window", "sliding_window", "sliding_log")


def _read(name: str) -> str:
    return files("hotlimit.redis").joinpath("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _source() -> str:
    main = _read("main")
    found = re.findall(r"--@ (\w+)", main)
    if sorted(found) != sorted(ALGORITHM_FILES):
        raise RuntimeError(f"main.lua includes {found}, expected {ALGORITHM_FILES}")
    body = re.sub(r"--@ (\w+)", lambda m: _read(m.group(1)), main)
    return _read("common") + "\n" + body


SOURCE = _source()
SHA = hashlib.sha1(SOURCE.encode("utf-8"), usedforsecurity=False).hexdigest()
