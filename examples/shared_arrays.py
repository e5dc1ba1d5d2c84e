"""numpy arrays through shared memory: big arguments and results with no pickling and no pipe.

    python examples/shared_arrays.py [--megabytes 256] [--workers 2]

An array of 256 KiB or more travels through a shared-memory segment: the sender copies it in
once, the receiver maps the same pages (no copy on receipt). An array allocated in shared memory
from the start (``snakepit.shared.empty`` / ``zeros``) is not copied at all: the receiver maps
the very pages it was filled in, read-only. Here a pool blurs "images": each call takes a frame
as an argument and returns the filtered frame; ``pool.submit`` spreads the frames over the
workers (a ``map``'s items travel in its batches' frames instead, fit for many small values);
and a streaming tool renders frames straight into shared memory and yields them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from snakepit import BaseAdapter, Pool, shared, tool


class Filters(BaseAdapter):
    @tool(description="a 3x3 box blur of a frame")
    def blur(self, frame: np.ndarray) -> np.ndarray:
        padded = np.pad(frame, 1, mode="edge").astype(np.float32)
        out = sum(padded[dy : dy + frame.shape[0], dx : dx + frame.shape[1]] for dy in range(3) for dx in range(3))
        return (out / 9).astype(frame.dtype)

    @tool(description="render frames of a moving gradient, one chunk per frame")
    def render(self, frames: int, height: int, width: int):
        x = np.linspace(0, 1, width, dtype=np.float32)
        for i in range(frames):
            frame = shared.empty((height, width), dtype=np.float32)  # in shared memory from the start
            frame[:] = np.sin(x * 10 + i / 5)
            yield frame  # crosses with no copy: the owner maps these pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=256, help="how much frame data to push through")
    parser.add_argument("--workers", type=int, default=2)
    opts = parser.parse_args()
    height, width = 1024, 1024  # 4 MiB frames of float32
    count = max(1, opts.megabytes // 4)
    rng = np.random.default_rng(0)
    frames = [rng.random((height, width), dtype=np.float32) for _ in range(min(count, 8))]

    with Pool(Filters, size=opts.workers) as pool:
        started = time.perf_counter()
        futures = [pool.submit("blur", frame=frames[i % len(frames)]) for i in range(count)]
        total = sum(future.result().nbytes for future in futures)
        elapsed = time.perf_counter() - started
        print(f"blurred {count} frames ({total / 2**20:.0f} MiB each way) in {elapsed:.2f} s")

        started = time.perf_counter()
        rendered = 0
        for frame in pool.stream("render", frames=count, height=height, width=width):
            assert not frame.flags.writeable  # delivered by reference: read-only (copy it to change it)
            rendered += frame.nbytes
        print(f"streamed {rendered / 2**20:.0f} MiB of frames in {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
