"""What runs the workers: one package per backend.

``process`` runs each worker as a local child process over pipes; the generic pool
(:mod:`snakepit.pool`) decides what to call where, and a backend carries it out.
"""
