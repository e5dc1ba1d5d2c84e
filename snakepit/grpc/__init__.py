"""The gRPC facade: the pool served to remote clients over Snakepit's bridge protocol.

Needs the ``grpc`` extra (``pip install 'snakepit[grpc]'``); ``import snakepit`` never imports
grpc. ``Pool.serve(...)`` starts a server (see :mod:`.server`).
"""
