"""A module with no public functions: Pool('helpers_without_functions') cannot start (test_functions)."""

VALUE = 1
