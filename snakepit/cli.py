"""The ``snakepit`` command line: ``demo``, ``tools``, ``call``, ``bench``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from . import Pool, SnakepitError

SHORTCUTS = {"showcase": "snakepit.adapters.showcase:ShowcaseAdapter"}


def _adapter(name: str) -> str:
    return SHORTCUTS.get(name, name)


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=repr))


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(quick=args.quick, size=args.size)
    return 0


def _cmd_tools(args: argparse.Namespace) -> int:
    with Pool(_adapter(args.adapter), size=1) as pool:
        for spec in pool.tools():
            params = ", ".join(
                f"{p.name}: {p.type}" + ("" if p.required else f" = {p.default!r}") for p in spec.parameters
            )
            kind = "stream" if spec.supports_streaming else "call"
            print(f"{spec.name}({params})  [{kind}]  {spec.description}")
    return 0


def _cmd_call(args: argparse.Namespace) -> int:
    try:
        arguments = json.loads(args.args) if args.args else {}
    except json.JSONDecodeError as exc:
        print(f"snakepit: arguments must be a JSON object: {exc}", file=sys.stderr)
        return 2
    with Pool(_adapter(args.adapter), size=1) as pool:
        if args.stream:
            pool.execute_stream(args.tool, arguments, _print_json, timeout=args.timeout)
        else:
            _print_json(pool.execute(args.tool, arguments, timeout=args.timeout))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    try:
        from benchmarks.__main__ import main as bench_main
    except ImportError:
        print("snakepit: the benchmarks live in the source checkout: run this from its root", file=sys.stderr)
        return 2
    return bench_main(args.names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snakepit", description="Pools of long-lived Python worker processes.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the showcase: streaming, a large dataset, throughput")
    demo.add_argument("--quick", action="store_true", help="smaller numbers, for a fast look")
    demo.add_argument("--size", type=int, default=2, help="worker processes (default 2)")
    demo.set_defaults(run=_cmd_demo)

    tools = commands.add_parser("tools", help="list an adapter's tools")
    tools.add_argument("adapter", help="'package.module:Class', or 'showcase'")
    tools.set_defaults(run=_cmd_tools)

    call = commands.add_parser("call", help="call one tool and print the result (JSON)")
    call.add_argument("adapter", help="'package.module:Class', or 'showcase'")
    call.add_argument("tool")
    call.add_argument("args", nargs="?", help="arguments as a JSON object")
    call.add_argument("--stream", action="store_true", help="stream the chunks, one JSON line each")
    call.add_argument("--timeout", type=float, default=None)
    call.set_defaults(run=_cmd_call)

    bench = commands.add_parser("bench", help="run benchmarks against their peers (from a source checkout)")
    bench.add_argument("names", nargs="*", help="which benchmarks (default: all)")
    bench.set_defaults(run=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except SnakepitError as error:
        print(f"snakepit: {error}", file=sys.stderr)
        if error.traceback:
            print(error.traceback, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
