"""hotlimit: a rate limiter for latency-sensitive Python services, with a Rust core.

>>> from hotlimit import Limiter
>>> limiter = Limiter("100/minute")
>>> limiter.hit("user:42").allowed
True
"""

import os as _os

from hotlimit import _native
from hotlimit._errors import (
    ArgumentTypeError,
    CostTypeError,
    HotlimitError,
    InvalidArgumentError,
    InvalidCostError,
    InvalidKeyError,
    InvalidRateError,
    KeyTypeError,
    RateLimitExceeded,
    StorageError,
)
from hotlimit._native import Decision, ManualClock
from hotlimit.limiter import ALGORITHMS, Algorithm, Key, Limiter, ahit_many, hit_many
from hotlimit.rate import Rate

__version__: str = _native.__version__

#: Longest key accepted, in UTF-8 bytes.
MAX_KEY_BYTES: int = _native.MAX_KEY_BYTES

__all__ = [
    "ALGORITHMS",
    "MAX_KEY_BYTES",
    "Algorithm",
    "ArgumentTypeError",
    "CostTypeError",
    "Decision",
    "HotlimitError",
    "InvalidArgumentError",
    "InvalidCostError",
    "InvalidKeyError",
    "InvalidRateError",
    "Key",
    "KeyTypeError",
    "Limiter",
    "ManualClock",
    "Rate",
    "RateLimitExceeded",
    "StorageError",
    "ahit_many",
    "hit_many",
    "__version__",
]

# The native sweeper thread must not hold a table lock across fork(), and a forked worker
# (gunicorn, uvicorn pre-fork) needs a sweeper thread of its own.
_os.register_at_fork(
    before=_native._before_fork,
    after_in_parent=_native._after_fork_parent,
    after_in_child=_native._after_fork_child,
)
