"""A forked worker gets a working sweeper of its own and never deadlocks on inherited locks."""

from __future__ import annotations

import os
import sys
import time
import warnings

import pytest

from hotlimit import Limiter, ManualClock


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_forked_child_limits_and_sweeps() -> None:
    clock = ManualClock()
    parent = Limiter("3/minute", clock=clock, sweep_interval=0.01)
    for i in range(2000):  # keep the sweeper busy while we fork
        parent.hit(f"k{i}")
    assert parent.hit("shared", 3).allowed
    for _ in range(20):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                # State was copied at fork: the key is drained here too.
                ok = not parent.hit("shared").allowed
                child = Limiter("3/minute", clock=clock, sweep_interval=0.01)
                child.hit("c")
                clock.advance(3600)
                deadline = time.monotonic() + 60
                while (len(child) or len(parent)) and time.monotonic() < deadline:
                    time.sleep(0.002)
                code = 0 if ok and len(child) == 0 and len(parent) == 0 else 2
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert not parent.hit("shared").allowed, "the parent's state is its own"
