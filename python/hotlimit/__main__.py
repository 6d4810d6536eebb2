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
    bench.add_argument("--plot", metavar="PATH", help="also draw the comparison as a PNG (needs matplotlib)")
    bench.add_argument(
        "--redis",
        metavar="URL",
        help="server for the shared modes (default: REDIS_URL, else a throwaway local server)",
    )
    bench.add_argument("--memory-only", action="store_true", help="skip Redis, hybrid and multi-process")
    args = parser.parse_args(argv)

    if args.command == "bench":
        from hotlimit import _bench

        if args.plot:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                parser.error("--plot needs matplotlib: pip install 'hotlimit[bench]'")
        report = _bench.run(
            quick=args.quick,
            progress=lambda m: print(m, file=sys.stderr, flush=True),
            redis_url=args.redis,
            shared=not args.memory_only,
        )
        print(_bench.format_report(report))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
        if args.plot:
            _bench.plot(report, args.plot)
            print(f"chart written to {args.plot}", file=sys.stderr)
        return 0
    return 2  # pragma: no cover - argparse rejects other commands


if __name__ == "__main__":
    sys.exit(main())
