"""The Lua script every Redis call runs, assembled from the files in ``lua/``.

One script serves every algorithm, so a batch may mix limiters. ``common.lua`` holds the
shared helpers; each algorithm of the native registry (``_native.ALGORITHMS``) has its own file,
``lua/<name>.lua``, a block of code that becomes one branch of the if-chain on the algorithm's
code that ``main.lua`` (which reads the batch and dispatches) includes where it says
``--@ algorithms``. Splicing the blocks in, rather
than defining a function per algorithm, saves creating those closures on every call (Redis
runs the whole script body each time). The result is loaded once per server (``SCRIPT LOAD``);
calls go by SHA-1 (``EVALSHA``) and reload on ``NOSCRIPT``.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files

from hotlimit import _native

__all__ = ["ALGORITHM_FILES", "SHA", "SOURCE"]

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
    body = main.replace("  --@ algorithms", _dispatch())
    return _read("common") + "\n" + body


SOURCE = _source()
SHA = hashlib.sha1(SOURCE.encode("utf-8"), usedforsecurity=False).hexdigest()
