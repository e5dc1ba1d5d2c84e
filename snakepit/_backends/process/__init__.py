"""The process backend: each worker a local child process, spoken to over pipes.

Owner side: :mod:`.launcher` starts a worker, :mod:`.connection` holds its pipes, pidfd and process,
:mod:`.spill` recovers what a dead worker had queued, :mod:`.relay` forwards its output as log
records, :mod:`.janitor` ends what its tools left behind if the owner dies. Worker side, in the
child: :mod:`.child`.
"""
