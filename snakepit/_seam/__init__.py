"""The floor the pool and the backends both stand on: the seam between them (:mod:`.backend`),
the worker table, the reactor, timing, a call's request and its session handle, affinity modes and
the launch description. Nothing here imports :mod:`snakepit._pool` or :mod:`snakepit._backends`."""
