"""One event-loop thread for every gRPC server of the process.

grpc.aio objects belong to the loop that made them, and grpc.aio loops on several threads of one
process are fragile: every server (and, in the same process, the async client) runs on this one
loop, started with the first and kept for the life of the process (a daemon thread).

grpc.aio counts its users (each server, channel and call takes a reference with
``init_grpc_aio`` and gives it back when it goes): when the count falls to zero it shuts its poller
down -- a completion queue with a thread and a socket pair read by this loop -- and the next server
sets a new one up. A reader of the old poller's socket, still registered with the loop, then fires
on a closed descriptor (``PollerCompletionQueue._handle_events``: ``OSError: [Errno 9]``; grpc#22365,
grpc#34139), or on a number reused meanwhile. So the loop holds one reference of its own for its
whole life: servers come and go over one poller.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def shared_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="snakepit-grpc", daemon=True)
            thread.start()
            asyncio.run_coroutine_threadsafe(_hold_grpc_aio(), loop).result()
            _loop, _thread = loop, thread
        return _loop


async def _hold_grpc_aio() -> None:
    """Take the loop's own reference to grpc.aio's process state (on the loop: it binds it)."""
    from grpc._cython import cygrpc

    cygrpc.init_grpc_aio()


def run(coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coroutine`` on the shared loop and wait for its result (from any other thread)."""
    loop = shared_loop()
    if threading.current_thread() is _thread:
        coroutine.close()
        raise RuntimeError("a blocking call on the gRPC loop's own thread would deadlock it")
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)


async def on_shared_loop(coroutine: Any) -> Any:
    """Await ``coroutine`` run on the shared gRPC loop, from whatever loop this is."""
    future = asyncio.run_coroutine_threadsafe(coroutine, shared_loop())
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        future.cancel()
        raise
    finally:
        # The future holds the coroutine's exception, whose traceback holds this frame: without
        # this, a failed call's grpc objects (and so grpc's threads) live on until a collection.
        del future
