"""The Ray backend: each worker a Ray actor (``Pool(..., backend="ray")``); the optional extra
``snakepit-pool[ray]``. Owner side: :mod:`.backend` and :mod:`.connection`; inside the actor:
:mod:`.actor`, which hosts tools with the same :class:`~snakepit._hosting.ToolHost` as a worker
process."""
