"""An exception class only the Executor's workers import (test_executor's owner never does)."""


class RaisedInWorkers(ValueError):
    pass


def raise_it() -> None:
    raise RaisedInWorkers("from a module the owner has not imported")
