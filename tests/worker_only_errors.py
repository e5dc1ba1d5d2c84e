"""An exception class only workers import (the owner of test_remote_errors never does)."""


class OnlyInWorkers(Exception):
    pass
