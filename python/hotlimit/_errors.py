"""Exceptions raised by hotlimit.

Everything hotlimit raises on purpose derives from :class:`HotlimitError`. Errors about a bad
value also derive from the built-in ``ValueError`` or ``TypeError``, so code that already catches
those keeps working::

    HotlimitError
    ├── InvalidRateError      (ValueError)  bad rate string, limit, period or burst (of any type)
    ├── InvalidArgumentError  (ValueError)  any other bad option or argument (timeout, max_keys, ...)
    ├── ArgumentTypeError     (TypeError)   such an option or argument of the wrong type
    ├── InvalidKeyError       (ValueError)  key too long, or a str that is not valid Unicode
    ├── KeyTypeError          (TypeError)   key is not str or bytes
    ├── InvalidCostError      (ValueError)  cost below 1 or above the limiter's capacity
    ├── CostTypeError         (TypeError)   cost is not an int
    ├── StorageError                        Redis failed or timed out (the cause is chained)
    └── RateLimitExceeded                   raised by @limiter.limit(...) only; carries the Decision

The rule, the same in every mode (memory, Redis, hybrid) because every argument is checked
before any mode-specific code runs: a bad argument raises one of these classes, never a
built-in ``TypeError``, ``ValueError`` or ``OverflowError``, and the message names the
parameter and shows the bad value (its ``repr``, cut to 60 characters). A value of the wrong
type raises a ``TypeError`` subclass; a value of the right type that cannot be used (out of
range, unknown name), a ``ValueError`` subclass; anything about the rate, an
``InvalidRateError``. ``True`` and ``False`` are not numbers here: a bool where an int or a
number of seconds is expected is a wrong type.

A denial is never an exception: ``hit`` returns a ``Decision`` whose ``allowed`` is False.
"""

from __future__ import annotations

__all__ = [
    "ArgumentTypeError",
    "CostTypeError",
    "HotlimitError",
    "InvalidArgumentError",
    "InvalidCostError",
    "InvalidKeyError",
    "InvalidRateError",
    "KeyTypeError",
    "RateLimitExceeded",
    "StorageError",
]


class HotlimitError(Exception):
    """Base class of every exception hotlimit raises."""


class InvalidRateError(HotlimitError, ValueError):
    """A rate string, limit, period or burst that cannot be used."""


class InvalidArgumentError(HotlimitError, ValueError):
    """An option or argument value that cannot be used."""


class ArgumentTypeError(HotlimitError, TypeError):
    """An option or argument of the wrong type (a str or a bool where a number is expected, ...)."""


class InvalidKeyError(HotlimitError, ValueError):
    """A key that is too long or cannot be encoded."""


class KeyTypeError(HotlimitError, TypeError):
    """A key that is neither str nor bytes."""


class InvalidCostError(HotlimitError, ValueError):
    """A cost below 1, or above what the limiter could ever allow."""


class CostTypeError(HotlimitError, TypeError):
    """A cost that is not an int."""


class StorageError(HotlimitError):
    """The shared store (Redis) failed or did not answer in time. The cause is chained."""


class RateLimitExceeded(HotlimitError):
    """A function guarded by ``@limiter.limit(...)`` was called over its limit. ``decision``
    holds the denial (``retry_after`` says when to try again)."""

    def __init__(self, decision: object, key: object = None) -> None:
        self.decision = decision
        self.key = key
        retry = getattr(decision, "retry_after", 0.0)
        super().__init__(f"rate limit exceeded; retry after {retry:.3f} s")
