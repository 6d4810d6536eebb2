"""The `hotlimit` command's pieces that need no long run: argument handling, the report's
formatting and the chart."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotlimit import _bench
from hotlimit.__main__ import main


def _report() -> dict[str, object]:
    rows = [
        _bench.Result("hot key, allowed", "floor: native no-op(key)", "floor", "", 18.0),
        _bench.Result("hot key, allowed", "hotlimit token_bucket hit()", "hotlimit", "token_bucket", 90.0),
        _bench.Result("hot key, allowed", "token-bucket (falconry)", "peer", "token_bucket", 420.0),
    ]
    red = [
        _bench.Result(_bench.REDIS_GROUP, "floor: EVALSHA return 1, same connection", "floor", "", 60_000.0),
        _bench.Result(
            _bench.REDIS_GROUP, "hotlimit token_bucket hit()", "hotlimit", "token_bucket", 75_000.0
        ),
        _bench.Result(_bench.REDIS_GROUP, "throttled-py gcra", "peer", "token_bucket", 60_000.0),
    ]
    shared = {
        "redis": [r.__dict__ for r in red],
        "hybrid_ns": 110.0,
        "memory_ns": 100.0,
        "throughput": [{"mode": "memory", "keys": "hot key", "workers": 1, "per_second": 5e6}],
        "hybrid_accuracy": 1.01,
    }
    memory = {"hotlimit": 57.0, "python dict": 111.0}
    return {
        "version": "test",
        "quick": True,
        "seconds": 1.0,
        "results": [r.__dict__ for r in rows],
        "memory_bytes_per_key": memory,
        "shared": shared,
        "targets": _bench.targets(rows, memory, shared),
    }


def test_report_states_ratios_and_targets() -> None:
    text = _bench.format_report(_report())
    assert "4.7x faster" in text, "token-bucket 420 ns vs hotlimit 90 ns"
    assert "1.25x slower" in text, "a peer faster than hotlimit is said to be"
    assert "[NOT met] redis token_bucket hit() <= 1.2x the EVALSHA floor: 1.25" in text
    assert "[    met] hybrid hit() <= 1.5x memory mode: 1.10" in text
    assert "allowed / limit = 1.010" in text


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "bench.png"
    _bench.plot(_report(), str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5_000


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "--no-such-flag"])
    assert info.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err
