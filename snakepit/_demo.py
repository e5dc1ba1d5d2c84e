"""``snakepit demo``: the showcase adapter in a real pool, narrated."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TextIO

from snakepit import HALT, Pool, SnakepitError
from snakepit.adapters.showcase import ShowcaseAdapter


def run(*, quick: bool = False, size: int = 2, out: TextIO | None = None) -> dict[str, Any]:
    """Run the demo, printing as it goes; returns the figures it measured."""
    say: Callable[..., None] = (lambda *a, **k: print(*a, **k, file=out)) if out else print
    figures: dict[str, Any] = {}
    started = time.perf_counter()
    quiet = logging.NullHandler()  # the demo narrates its own timeout; no stray warning lines
    logging.getLogger("snakepit").addHandler(quiet)
    try:
        return _run(say, quick, size, started, figures)
    finally:
        logging.getLogger("snakepit").removeHandler(quiet)


def _run(say: Callable[..., None], quick: bool, size: int, started: float, figures: dict[str, Any]) -> dict[str, Any]:
    with Pool(ShowcaseAdapter, size=size) as pool:
        say(f"snakepit demo: {size} worker processes hosting ShowcaseAdapter, ready in {time.perf_counter() - started:.2f} s")

        say("\n1. Tools (specs come from the methods' signatures)")
        for spec in pool.tools():
            params = ", ".join(
                p.name + (f": {p.type}" if p.type != "any" else "") + ("" if p.required else f" = {p.default!r}")
                for p in spec.parameters
            )
            kind = "stream" if spec.supports_streaming else "call"
            say(f"   {spec.name:<16} {kind:<7} {spec.description}")
            say(f"   {'':<16} {'':<7} ({params})")

        say("\n2. Training progress, streamed as each epoch finishes")
        epochs = 3 if quick else 6

        def show_epoch(event: dict[str, Any]) -> None:
            if event.get("type") == "progress":
                bar = "#" * event["epoch"] + "." * (event["total"] - event["epoch"])
                say(
                    f"   epoch {event['epoch']}/{event['total']}  [{bar}]  loss {event['loss']:.4f}  accuracy {event['accuracy']:.3f}"
                )
            else:
                say(f"   {event['type']}: {event['epochs']} epochs, final loss {event['final_loss']}")

        result = pool.execute_stream("train", {"epochs": epochs, "delay": 0.05 if quick else 0.3}, show_epoch)
        say(
            f"   {result.chunks} chunks from worker {result.worker_id} in {result.execution_time_ms:.0f} ms; "
            f"explicit final chunk with metadata {result.metadata}"
        )

        say("\n3. A large dataset, streamed in chunks")
        rows, chunk_size = (50_000, 5_000) if quick else (1_000_000, 10_000)
        total_rows = 0
        checksum = 0.0
        started = time.perf_counter()
        for chunk in pool.stream("dataset", {"rows": rows, "chunk_size": chunk_size}):
            total_rows += len(chunk["ids"])
            checksum += sum(chunk["values"])
        elapsed = time.perf_counter() - started
        figures["dataset_rows_per_s"] = total_rows / elapsed
        say(
            f"   {total_rows:,} rows in {rows // chunk_size} chunks of {chunk_size:,}: {elapsed:.2f} s, "
            f"{total_rows / elapsed:,.0f} rows/s (mean value {checksum / total_rows:.3f})"
        )

        say("\n4. Chunk throughput: small dict chunks, one worker to this process")
        count = 20_000 if quick else 300_000
        started = time.perf_counter()
        result = pool.execute_stream("numbered_stream", {"count": count}, lambda chunk: None)
        elapsed = time.perf_counter() - started
        figures["chunks_per_s"] = result.chunks / elapsed
        say(
            f"   {result.chunks:,} chunks in {elapsed:.3f} s: {result.chunks / elapsed:,.0f} chunks/s "
            "(python -m benchmarks compares this with multiprocessing)"
        )

        say("\n5. Cancellation: HALT from the callback closes the generator in the worker")
        seen: list[int] = []

        def take_five(chunk: dict[str, Any]) -> Any:
            seen.append(chunk["tick"])
            return HALT if len(seen) == 5 else None

        result = pool.execute_stream("endless", {"delay": 0.01}, take_five)
        say(f"   halted={result.halted} after {result.chunks} chunks; the generator was closed in the worker (its finally ran)")
        with pool.stream("endless", {"delay": 0.0}) as ticks:
            for tick in ticks:
                if tick["tick"] == 99:
                    break
        say("   a `for` loop left with `break` cancels the same way")

        say("\n   A timeout interrupts the tool itself: a worker blocked in time.sleep(30) is free at once")
        with pool.session("demo-timeout", affinity="strict_queue") as pinned:  # both calls on one worker
            worker = pinned.execute("stats")["pid"]
            started = time.perf_counter()
            try:
                pinned.execute("sleep", {"seconds": 30}, timeout=0.5)
            except SnakepitError as error:
                say(
                    f"   sleep(30) with timeout=0.5: [{error.category}/{error.reason}] after {time.perf_counter() - started:.2f} s"
                )
            started = time.perf_counter()
            after = pinned.execute("stats")["pid"]
        say(
            f"   the next call took {1000 * (time.perf_counter() - started):.1f} ms on "
            f"{'the same worker' if after == worker else 'another worker'} (restarts: {pool.stats()['restarts']})"
        )

        say("\n6. Errors are data: category, reason, message, worker traceback")
        for tool, args in (("fail", {"message": "the model exploded"}), ("add", {"a": "two"}), ("no_such_tool", {})):
            try:
                pool.execute(tool, args)
            except SnakepitError as error:
                say(f"   {tool}: {error}")

        say("\n7. Sessions: calls with a session_id return to the worker that holds its state")
        with pool.session("alice", affinity="strict_queue") as alice:
            visits = [alice.execute("ping") for _ in range(3)]
        say(
            f"   3 calls of session 'alice' all ran in pid {visits[0]['pid']} "
            f"(same worker: {len({v['pid'] for v in visits}) == 1}); its call counter went {[v['calls'] for v in visits]}"
        )

        say("\n8. map: many small calls, batched and pipelined over every worker")
        count = 20_000 if quick else 200_000
        started = time.perf_counter()
        total = sum(pool.map("add", ({"a": i, "b": 1} for i in range(count))))
        elapsed = time.perf_counter() - started
        figures["map_per_s"] = count / elapsed
        say(f"   {count:,} calls of add() in {elapsed:.2f} s: {count / elapsed:,.0f} calls/s (sum {total:,.0f})")

        say("\n9. asyncio: three streams interleaved on one event loop")

        async def three_streams() -> list[int]:
            async def consume(steps: int) -> int:
                return len([event async for event in pool.astream("progress_stream", {"steps": steps, "delay": 0.01})])

            return list(await asyncio.gather(consume(10), consume(20), consume(30)))

        say(f"   chunks per stream: {asyncio.run(three_streams())}")

        stats = pool.stats()
        figures["stats"] = stats
        say(
            f"\npool stats: requests={stats['requests']} errors={stats['errors']} workers={stats['workers']} "
            f"restarts={stats['restarts']}"
        )
    say("closed: cleanup() ran in every worker and every process was reaped")
    return figures
