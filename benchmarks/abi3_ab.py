"""A/B of two builds of hotlimit's native extension on the hot path: instructions and time per call.

Made to decide between one abi3 wheel (pyo3 feature ``abi3-py311``) and per-version wheels:
build the extension twice from the same commit, install each build into its own venv, and
give this script the two venvs' interpreters (A first, B second; ratios are B/A)::

    python benchmarks/abi3_ab.py /tmp/abi3/venv-normal/bin/python /tmp/abi3/venv-abi3/bin/python

README.md ("Packaging") has the full recipe, the builds included. Standard library only; each
measurement runs in a fresh child process of the interpreter given, so this script itself can
run under any Python 3.11+.

Two measurements, each of ``n`` calls of every case in ``CASES`` on
``hotlimit.Limiter("1000000000/s")`` (a rate no call reaches, so every call is allowed):

1. **Instructions per call**, counted by ``valgrind --tool=callgrind`` in the main thread only
   (``--separate-threads=yes``: the native sweeper thread wakes on the wall clock, which
   valgrind slows down by a varying amount). Each case runs twice, with ``n`` and ``2 * n``
   calls; the difference divided by ``n`` is the cost of one call with interpreter start-up,
   imports and warm-up cancelled out. It includes the ``for`` loop's own iteration, which is
   the same for A and B; the ``loop`` row shows that floor, and ``B/A net`` compares the
   calls with it subtracted. Deterministic to a fraction of an instruction per call, so this
   is the number to decide on.
2. **Nanoseconds per call**, wall and CPU time (``time.perf_counter_ns`` and
   ``time.thread_time_ns``): in each child, the minimum over ``--rounds`` rounds of ``n``
   calls (timeit's rule: the fastest round is the one least disturbed). ``--repeats`` children
   per build, A and B interleaved (ABBA order, so a drift in machine speed falls on both); the
   table gives the median over the children and the spread (min-max) beside it.

Each child waits 1.5 s after making the limiter, until the native clock has switched from
``clock_gettime`` to the TSC (see ``_CHILD``), so both measurements see the clock that a
long-running process uses.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

#: The cases, in table order: name -> Python expression for the callable (``lim`` is the
#: limiter) and the key it is called with. In memory mode ``Limiter`` binds ``hit`` and
#: ``allow`` straight to the extension's methods, so these are calls into the extension with
#: no Python frame between. ``loop`` is the floor: the same loop around ``len(key)``, a builtin
#: call that allocates nothing.
LOOP = "loop: len(key)"
CASES: dict[str, tuple[str, str]] = {
    "hit(str)": ("lim.hit", "'user:42'"),
    "allow(str)": ("lim.allow", "'user:42'"),
    "hit(bytes)": ("lim.hit", "b'user:42'"),
    LOOP: ("len", "'user:42'"),
}

# The child: runs in the interpreter under test. argv: mode, n, rounds, CASES as JSON, then the
# case names. "describe" prints the Python version and the extension file it loads; "count"
# runs one case's loop once (under callgrind); "time" prints a JSON object
# {case: [wall ns per call, CPU ns per call]} for every case named.
_CHILD = r"""
import json, sys, time
import hotlimit
import hotlimit._native

CASES = json.loads(sys.argv[4])
mode, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lim = hotlimit.Limiter("1000000000/s", redis=False)  # memory mode, whatever REDIS_URL says
# The native clock reads clock_gettime until the sweeper thread, 1 s after import, has checked
# the TSC against it; from then on it reads the TSC. Wait for that, so that every run and every
# case measures the same clock path (otherwise the switch lands mid-loop, at a point that
# depends on the machine's speed, and valgrind's slowdown makes it land anywhere).
if mode != "describe":
    time.sleep(1.5)

def run(fn, key, n):
    for _ in range(n):
        fn(key)

def case(name):
    fn_expr, key_expr = CASES[name]
    fn, key = eval(fn_expr), eval(key_expr)
    run(fn, key, 10_000)  # warm-up: the key's slot, Decision objects to reuse, specialised bytecode
    return fn, key

if mode == "describe":
    print(json.dumps({"version": sys.version.split()[0], "native": hotlimit._native.__file__}))
elif mode == "count":
    fn, key = case(sys.argv[5])
    run(fn, key, n)
else:
    out = {}
    for name in sys.argv[5:]:
        fn, key = case(name)
        best_wall = best_cpu = float("inf")
        for _ in range(rounds):
            w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            run(fn, key, n)
            c1, w1 = time.thread_time_ns(), time.perf_counter_ns()
            best_wall, best_cpu = min(best_wall, (w1 - w0) / n), min(best_cpu, (c1 - c0) / n)
        out[name] = [best_wall, best_cpu]
    print(json.dumps(out))
"""


def _child(
    python: str, mode: str, n: int, rounds: int, names: Sequence[str], *, prefix: Sequence[str] = ()
) -> str:
    """Runs the child in ``python`` (under ``prefix``, e.g. valgrind) and returns its stdout.

    ``-s`` and a fresh temporary working directory keep user site-packages and the checkout
    off ``sys.path``: ``hotlimit`` comes from the interpreter's own environment. A fixed hash
    seed makes the interpreter's own work the same from run to run.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONHASHSEED"] = "0"
    args = [*prefix, python, "-s", "-c", _CHILD, mode, str(n), str(rounds), json.dumps(CASES), *names]
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{python} {mode} {' '.join(names)} failed:\n{done.stderr}")
    return done.stdout


def instructions(python: str, name: str, n: int, out: Path) -> int:
    """Instructions executed by the main thread of a child running case ``name`` ``n`` times;
    ``out`` names callgrind's output files."""
    prefix = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}"]
    _child(python, "count", n, 0, [name], prefix=prefix)
    main_thread = Path(f"{out}-01")  # callgrind numbers the threads' files from 01, the main thread
    for line in main_thread.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {main_thread}")


def instructions_per_call(pythons: Sequence[str], n: int, jobs: int) -> dict[tuple[str, str], float]:
    """(python, case) -> instructions per call, from the difference of a 2n run and an n run.

    Instruction counts do not depend on what else the machine runs, so the runs go in parallel.
    """
    runs = [(p, name, calls) for p in pythons for name in CASES for calls in (n, 2 * n)]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(jobs) as pool:
        outs = [Path(tmp) / f"cg{i}" for i in range(len(runs))]
        counts = list(pool.map(lambda r, out: instructions(r[0], r[1], r[2], out), runs, outs))
    total = {r: c for r, c in zip(runs, counts, strict=True)}
    return {(p, name): (total[p, name, 2 * n] - total[p, name, n]) / n for p in pythons for name in CASES}


@dataclass
class Timing:
    """One build's per-call times over the children: one (min-of-rounds) sample per child."""

    wall: list[float]
    cpu: list[float]


def timings(pythons: Sequence[str], n: int, rounds: int, repeats: int) -> dict[tuple[str, str], Timing]:
    """(python, case) -> ns per call, children run one at a time in ABBA order."""
    result = {(p, name): Timing([], []) for p in pythons for name in CASES}
    for i in range(repeats):
        for p in pythons if i % 2 == 0 else reversed(pythons):
            sample: dict[str, list[float]] = json.loads(_child(p, "time", n, rounds, list(CASES)))
            for name, (wall, cpu) in sample.items():
                result[p, name].wall.append(wall)
                result[p, name].cpu.append(cpu)
    return result


def _spread(xs: list[float]) -> str:
    """Median and range, e.g. ``61.2 (60.8-63.0)``."""
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"


def _ratio(b: float, a: float, digits: int = 1) -> str:
    """B against A as a change, e.g. ``+1.2%``."""
    return f"{(b / a - 1) * 100:+.{digits}f}%"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("python_a", help="interpreter with build A installed (the baseline)")
    parser.add_argument("python_b", help="interpreter with build B installed (ratios are B/A)")
    parser.add_argument("-n", type=int, default=200_000, help="calls per loop (default 200000)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per child (default 7)")
    parser.add_argument("--repeats", type=int, default=10, help="timing children per build (default 10)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel callgrind runs")
    parser.add_argument("--no-callgrind", action="store_true", help="timings only")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    pythons = [args.python_a, args.python_b]

    described = [json.loads(_child(p, "describe", 0, 0, [])) for p in pythons]
    for tag, p, d in zip("AB", pythons, described, strict=True):
        print(f"{tag}: {p}\n   CPython {d['version']}, {Path(d['native']).name}")
    if described[0]["version"] != described[1]["version"]:
        print("warning: A and B are different CPython versions; the comparison is not of builds alone")
    if described[0]["native"] == described[1]["native"]:
        print("warning: A and B load the same extension file")

    ins: dict[tuple[str, str], float] = {}
    if not args.no_callgrind:
        if shutil.which("valgrind") is None:
            raise SystemExit("valgrind not found (or pass --no-callgrind)")
        ins = instructions_per_call(pythons, args.n, args.jobs)
    times = timings(pythons, args.n, args.rounds, args.repeats)

    a, b = pythons
    print(
        f"\nper call; n={args.n}; time: median (min-max) over {args.repeats} children per build, "
        f"each the best of {args.rounds} rounds\n"
    )
    header = [
        "case",
        "instr A",
        "instr B",
        "B/A",
        "B/A net",
        "wall ns A",
        "wall ns B",
        "B/A",
        "CPU ns A",
        "CPU ns B",
        "B/A",
    ]
    rows = [header]
    for name in CASES:
        ta, tb = times[a, name], times[b, name]
        row = [name]
        if ins:
            ia, ib = ins[a, name], ins[b, name]
            row += [f"{ia:.1f}", f"{ib:.1f}", _ratio(ib, ia, 2)]
            # Net: the call alone, the loop's floor (the same in A and B) taken off both.
            row.append("-" if name == LOOP else _ratio(ib - ins[b, LOOP], ia - ins[a, LOOP], 2))
        else:
            row += ["-", "-", "-", "-"]
        for xa, xb in ((ta.wall, tb.wall), (ta.cpu, tb.cpu)):
            row += [_spread(xa), _spread(xb), _ratio(statistics.median(xb), statistics.median(xa))]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )

    if args.json:
        raw = {
            "n": args.n,
            "pythons": {"A": a, "B": b},
            "described": described,
            "instructions_per_call": {
                f"{tag}|{name}": ins[p, name] for tag, p in zip("AB", pythons, strict=True) for name in CASES
            }
            if ins
            else {},
            "ns_per_call": {
                f"{tag}|{name}": {"wall": times[p, name].wall, "cpu": times[p, name].cpu}
                for tag, p in zip("AB", pythons, strict=True)
                for name in CASES
            },
        }
        args.json.write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
