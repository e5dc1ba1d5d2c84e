"""One event-loop thread for every gRPC server of the process.

grpc.aio objects belong to the loop that made them, and grpc.aio loops on several threads of one
process are fragile: every server (and, in the same process, the async client) runs on this one
loop, started with the first and kept for the life of the process (a daemon thread).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def shared_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            _thread = threading.Thread(target=_loop.run_forever, name="snakepit-grpc", daemon=True)
            _thread.start()
        return _loop


def run(coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coroutine`` on the shared loop and wait for its result (from any other thread)."""
    loop = shared_loop()
    if threading.current_thread() is _thread:
        coroutine.close()
        raise RuntimeError("a blocking call on the gRPC loop's own thread would deadlock it")
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)
