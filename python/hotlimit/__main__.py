"""The ``hotlimit`` command: ``hotlimit bench [--quick] [--json PATH]``."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hotlimit", description="hotlimit tools")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="compare hotlimit with a native floor and other Python limiters")
    bench.add_argument("--quick", action="store_true", help="a shorter run (about 15 s)")
    bench.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    args = parser.parse_args(argv)

    if args.command == "bench":
        from hotlimit import _bench

        report = _bench.run(quick=args.quick, progress=lambda m: print(m, file=sys.stderr, flush=True))
        print(_bench.format_report(report))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
        return 0
    return 2  # pragma: no cover - argparse rejects other commands


if __name__ == "__main__":
    sys.exit(main())
