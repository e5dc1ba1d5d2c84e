"""What runs the workers: one package per backend, behind the seam of :mod:`snakepit._seam.backend`.

``process`` runs each worker as a local child process over pipes, ``ray`` as a Ray actor. The
pool (:mod:`snakepit._pool`) decides what to call where and when; a backend carries it out. Each
backend's ``create`` checks the options that are its own; the pool finds it by name
(:data:`snakepit._seam.backend.BACKENDS`).
"""
