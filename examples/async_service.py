"""An asyncio service streaming to many clients: each connection sends a prompt and receives the
tokens of its answer as the workers produce them.

    python examples/async_service.py                 # serve on 127.0.0.1:8765 until Ctrl-C
    python examples/async_service.py --clients 50    # serve, run 50 concurrent clients, exit

The protocol is one line in (the prompt), then one line per token, then an empty line. Each
connection's handler iterates ``pool.astream(...)``: many streams share one event loop and the
pool's workers, no thread per client; a client that hangs up cancels its generation in the
worker (the ``async for`` is left, the stream closed), so nobody's tokens are computed for no one.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from snakepit import BaseAdapter, Pool, tool


class Generator(BaseAdapter):
    @tool(description="answer a prompt token by token")
    def generate(self, prompt: str, tokens: int = 20, delay: float = 0.002):
        words = prompt.split() or ["..."]
        for i in range(tokens):
            time.sleep(delay)  # the model's work for one token
            yield words[i % len(words)].upper()


async def handle(pool: Pool, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tokens: int) -> None:
    try:
        prompt = (await reader.readline()).decode().strip()
        async with pool.astream("generate", prompt=prompt, tokens=tokens) as stream:
            async for token in stream:
                writer.write(token.encode() + b"\n")
                await writer.drain()  # a slow client slows its own stream, nobody else's
        writer.write(b"\n")
        await writer.drain()
    except ConnectionError:
        pass  # the client left: leaving the loop cancelled its generation
    finally:
        writer.close()


async def client(port: int, n: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"hello from client {n}\n".encode())
    await writer.drain()
    received = 0
    while await reader.readline() not in (b"\n", b""):
        received += 1
    writer.close()
    await writer.wait_closed()
    return received


async def main(opts: argparse.Namespace) -> None:
    async with Pool(Generator, size=opts.workers) as pool:
        server = await asyncio.start_server(lambda r, w: handle(pool, r, w, opts.tokens), "127.0.0.1", opts.port)
        port = server.sockets[0].getsockname()[1]
        async with server:
            if not opts.clients:
                print(f"serving on 127.0.0.1:{port} (try: echo 'tell me more' | nc 127.0.0.1 {port})")
                await server.serve_forever()
            started = time.perf_counter()
            received = await asyncio.gather(*(client(port, n) for n in range(opts.clients)))
            elapsed = time.perf_counter() - started
            assert received == [opts.tokens] * opts.clients
            print(f"{opts.clients} clients received {sum(received):,} tokens in {elapsed:.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765, help="0: any free port")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--clients", type=int, default=0, help="run this many clients, then exit")
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        pass
