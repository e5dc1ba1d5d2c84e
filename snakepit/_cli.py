"""The ``snakepit`` command line: ``demo``, ``serve``, ``tools``, ``call``, ``bench``.

``serve --metrics HOST:PORT`` also serves the pool's Prometheus metrics there, under the same
token rule as the gRPC server (``SNAKEPIT_TOKEN``, else loopback only, unless ``--insecure``).

``tools`` and ``call`` run an adapter in a pool of their own, or, with ``--address``, call a
served pool (``snakepit serve``, ``pool.serve()``) instead; the token then comes from the
``SNAKEPIT_TOKEN`` environment variable, never from an argument (arguments are visible to every
user of the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import snakepit
from snakepit import Pool, SnakepitError

SHORTCUTS = {"showcase": "snakepit.adapters.showcase:ShowcaseAdapter"}


def _adapter(name: str) -> str:
    return SHORTCUTS.get(name, name)


def _print_json(value: Any) -> None:
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError):  # keys JSON cannot have (a tuple), a value that contains itself
        text = json.dumps(_printable(value))
    print(text)


def _printable(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON can show it: str keys, and ``repr`` of what it cannot carry."""
    if depth > 100:
        return repr(value)
    if isinstance(value, dict):
        return {key if isinstance(key, str) else repr(key): _printable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(item, depth + 1) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _cmd_demo(args: argparse.Namespace) -> int:
    from snakepit._demo import run

    run(quick=args.quick, size=args.size)
    return 0


def _target(adapter: str | None, address: str | None) -> Any:
    """A pool of one worker for ``adapter``, or a client of the pool served at ``address``."""
    if address is not None:
        from snakepit.grpc import Client

        return Client(address, token=os.environ.get("SNAKEPIT_TOKEN") or None)
    return Pool(_adapter(adapter), size=1).start()  # type: ignore[arg-type]


def _cmd_tools(args: argparse.Namespace) -> int:
    if (args.adapter is None) == (args.address is None):
        print("snakepit tools: give an ADAPTER, or --address of a served pool", file=sys.stderr)
        return 2
    target = _target(args.adapter, args.address)
    try:
        for spec in target.tools():
            params = ", ".join(f"{p.name}: {p.type}" + ("" if p.required else f" = {p.default!r}") for p in spec.parameters)
            kind = "stream" if spec.supports_streaming else "call"
            print(f"{spec.name}({params})  [{kind}]  {spec.description}")
    finally:
        target.close()
    return 0


def _cmd_call(args: argparse.Namespace) -> int:
    words = list(args.words)
    adapter = None if args.address else (words.pop(0) if words else None)
    if not words or len(words) > 2 or (args.address is None and adapter is None):
        usage = "TOOL [ARGS] with --address" if args.address else "ADAPTER TOOL [ARGS]"
        print(f"snakepit call: expected {usage}", file=sys.stderr)
        return 2
    tool, raw = words[0], (words[1] if len(words) > 1 else None)
    try:
        arguments = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        print(f"snakepit: arguments must be a JSON object: {exc}", file=sys.stderr)
        return 2
    target = _target(adapter, args.address)
    try:
        options = {"timeout": args.timeout, "session_id": args.session}
        if args.stream:
            target.execute_stream(tool, arguments, _print_json, **options)
        else:
            _print_json(target.execute(tool, arguments, **options))
    finally:
        target.close()
    return 0


def _cmd_events(args: argparse.Namespace) -> int:
    """Print a served pool's events, one JSON line each, until Ctrl-C (or ``--count``)."""
    from snakepit.grpc import Client

    with Client(args.address, token=os.environ.get("SNAKEPIT_TOKEN") or None) as client:
        with client.telemetry(sampling_rate=args.sampling_rate, allow=args.allow or (), deny=args.deny or ()) as events:
            for seen, event in enumerate(events, 1):
                _print_json(event)
                sys.stdout.flush()
                if args.count is not None and seen >= args.count:
                    break
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Serve a pool until Ctrl-C or SIGTERM, then close it (every worker reaped)."""
    tls = None
    if args.tls_cert or args.tls_key:
        from snakepit.grpc import TLS

        tls = TLS(args.tls_cert, args.tls_key, args.tls_client_ca)
    # Ctrl-C and SIGTERM shut down cleanly (also when started in the background, where a shell
    # may have set SIGINT to be ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    token = os.environ.get("SNAKEPIT_TOKEN") or None
    with Pool(_adapter(args.adapter), size=args.size) as pool:
        server = pool.serve(args.address, token=token, tls=tls, allow_pickle=args.allow_pickle, insecure=args.insecure)
        print(f"serving {args.adapter} ({args.size or pool.size} workers) on {server.address}", flush=True)
        if args.metrics is not None:  # the same token: scrapes send it as a bearer token
            metrics = pool.serve_metrics(args.metrics, token=token, insecure=args.insecure)
            print(f"metrics on {metrics.url}", flush=True)
        try:
            signal.pause() if hasattr(signal, "pause") else _wait_forever()
        except KeyboardInterrupt:
            print("shutting down", flush=True)
    return 0


def _wait_forever() -> None:  # pragma: no cover - platforms without signal.pause
    import threading

    threading.Event().wait()


def _cmd_bench(args: argparse.Namespace) -> int:
    try:
        from benchmarks.__main__ import main as bench_main
    except ImportError:
        print(
            "snakepit: the benchmarks are not part of the installed package: run this from the root of a source"
            " checkout or of the unpacked sdist (pip download --no-binary :all: --no-deps snakepit-pool)",
            file=sys.stderr,
        )
        return 2
    return bench_main(args.names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snakepit", description="Pools of long-lived Python worker processes.")
    parser.add_argument("--version", action="version", version=f"snakepit-pool {snakepit.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the showcase: streaming, a large dataset, throughput")
    demo.add_argument("--quick", action="store_true", help="smaller numbers, for a fast look")
    demo.add_argument("--size", type=int, default=2, help="worker processes (default 2)")
    demo.set_defaults(run=_cmd_demo)

    serve = commands.add_parser("serve", help="serve a pool over gRPC until Ctrl-C or SIGTERM")
    serve.add_argument("adapter", help="'package.module:Class', or 'showcase'")
    serve.add_argument("--size", type=int, default=None, help="worker processes (default: the CPU count)")
    serve.add_argument("--address", default="127.0.0.1:50051", help="HOST:PORT or unix:PATH (default 127.0.0.1:50051)")
    serve.add_argument("--tls-cert", help="PEM certificate (with --tls-key): serve TLS")
    serve.add_argument("--tls-key", help="PEM private key")
    serve.add_argument("--tls-client-ca", help="PEM CA: clients must present a certificate it signed")
    serve.add_argument("--allow-pickle", action="store_true", help="unpickle pickled parameters (trusted clients only)")
    serve.add_argument(
        "--metrics",
        metavar="ADDRESS",
        help="also serve Prometheus metrics at http://ADDRESS/metrics (HOST:PORT; the metrics extra; same token rule)",
    )
    serve.add_argument("--insecure", action="store_true", help="serve a public address without a token or mutual TLS")
    serve.set_defaults(run=_cmd_serve)

    tools = commands.add_parser("tools", help="list an adapter's tools, or a served pool's (--address)")
    tools.add_argument("adapter", nargs="?", help="'package.module:Class', or 'showcase'")
    tools.add_argument("--address", help="HOST:PORT of a served pool (token: $SNAKEPIT_TOKEN)")
    tools.set_defaults(run=_cmd_tools)

    call = commands.add_parser(
        "call",
        help="call one tool and print the result (JSON)",
        usage="snakepit call ADAPTER TOOL [ARGS] | snakepit call --address HOST:PORT TOOL [ARGS]",
    )
    call.add_argument("words", nargs="+", help="ADAPTER TOOL [ARGS], or TOOL [ARGS] with --address; ARGS a JSON object")
    call.add_argument("--address", help="HOST:PORT of a served pool (token: $SNAKEPIT_TOKEN)")
    call.add_argument("--stream", action="store_true", help="stream the chunks, one JSON line each")
    call.add_argument("--session", help="a session id: the call goes to the session's worker")
    call.add_argument("--timeout", type=float, default=None)
    call.set_defaults(run=_cmd_call)

    events = commands.add_parser("events", help="print a served pool's events (StreamTelemetry), one JSON line each")
    events.add_argument("--address", required=True, help="HOST:PORT of a served pool (token: $SNAKEPIT_TOKEN)")
    events.add_argument("--allow", action="append", help="keep only events whose name matches (fnmatch; repeatable)")
    events.add_argument("--deny", action="append", help="drop events whose name matches (fnmatch; repeatable)")
    events.add_argument("--sampling-rate", type=float, default=1.0, help="the fraction of events kept (default 1)")
    events.add_argument("--count", type=int, default=None, help="stop after this many events")
    events.set_defaults(run=_cmd_events)

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
