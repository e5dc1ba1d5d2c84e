"""Benchmarks: snakepit side by side with its peers, in one run, reported as medians and ratios."""
