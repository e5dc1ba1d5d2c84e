"""Progress bars for maps and streams, without writing the tqdm glue by hand.

``pool.map(..., progress=True)`` shows a tqdm bar (``pip install 'snakepit-pool[progress]'``);
``progress=callable`` receives ``(done, total)`` instead (``total`` is ``None`` when the input
has no length). For a streaming tool whose chunks report their own progress (fields such as
``step`` and ``total``), wrap the stream or the callback::

    for chunk in track(pool.stream("train", {"epochs": 5}), step="epoch", total="total"):
        ...
    pool.execute_stream("train", {"epochs": 5}, progress_callback(print, step="epoch"))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from snakepit import _errors as errors
from snakepit._errors import Reason

__all__ = ["track", "progress_callback"]

ProgressFn = Callable[[int, "int | None"], None]


def _tqdm_class() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise errors.validation(
            Reason.INVALID_ARGUMENTS, "progress=True needs tqdm: pip install 'snakepit-pool[progress]'"
        ) from None
    return tqdm


class Reporter:
    """Counts completed items and reports them to a tqdm bar or a ``(done, total)`` callable.

    ``deferred``: the bar is drawn at the first report, where it stands then (a stream's chunks
    say how far along they are and out of how many only as they come), rather than at once
    with neither; after :meth:`close` no bar is drawn again.
    """

    def __init__(
        self,
        progress: bool | ProgressFn | None,
        total: int | None,
        description: str | None = None,
        *,
        deferred: bool = False,
    ) -> None:
        self._bar: Any = None
        self._new_bar: Callable[[int], Any] | None = None
        self._callback: ProgressFn | None = None
        self.total = total
        if progress is True:
            tqdm = _tqdm_class()  # refused now if tqdm is missing, deferred or not

            def new_bar(done: int) -> Any:
                return tqdm(total=self.total, initial=done, desc=description, unit="item")

            if deferred:
                self._new_bar = new_bar
            else:
                self._bar = new_bar(0)
        elif callable(progress):
            self._callback = progress
        elif progress not in (False, None):
            raise errors.validation(Reason.INVALID_ARGUMENTS, "progress must be True, False or a callable(done, total)")

    @property
    def active(self) -> bool:
        return self._bar is not None or self._new_bar is not None or self._callback is not None

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
        elif self._new_bar is not None:
            self._bar, self._new_bar = self._new_bar(done), None
        elif self._callback is not None:
            self._callback(done, self.total)

    def set(self, done: int, total: int | None) -> None:
        if total is not None and total != self.total:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
                self._bar.refresh()
        self.update(done)

    def close(self) -> None:
        self._new_bar = None
        if self._bar is not None:
            self._bar.close()


def _position(chunk: Any, step: str, total: str) -> tuple[int, int | None] | None:
    if isinstance(chunk, dict) and isinstance(chunk.get(step), int):
        count = chunk.get(total)
        return chunk[step], count if isinstance(count, int) else None
    return None


def track(
    chunks: Iterable[Any],
    *,
    step: str = "step",
    total: str = "total",
    progress: bool | ProgressFn = True,
    description: str | None = None,
) -> Iterator[Any]:
    """Yield ``chunks`` unchanged, moving a progress bar by the chunks' ``step``/``total`` fields.

    The bar is drawn at the first chunk that has them, where that chunk stands."""
    reporter = Reporter(progress, None, description, deferred=True)
    try:
        for chunk in chunks:
            position = _position(chunk, step, total)
            if position is not None:
                reporter.set(*position)
            yield chunk
    finally:
        reporter.close()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def progress_callback(
    callback: Callable[[Any], Any] | None = None,
    *,
    step: str = "step",
    total: str = "total",
    progress: bool | ProgressFn = True,
    description: str | None = None,
) -> Callable[[Any], Any]:
    """An ``execute_stream`` callback that moves a progress bar, then calls ``callback``.

    The bar is drawn at the first chunk that has those fields, and closes when a chunk reaches
    ``step == total``; call ``.close()`` on the returned function to close it earlier.
    """
    reporter = Reporter(progress, None, description, deferred=True)

    def on_chunk(chunk: Any) -> Any:
        position = _position(chunk, step, total)
        if position is not None:
            reporter.set(*position)
            if position[1] is not None and position[0] >= position[1]:
                reporter.close()
        return callback(chunk) if callback is not None else None

    on_chunk.close = reporter.close  # type: ignore[attr-defined]
    return on_chunk
