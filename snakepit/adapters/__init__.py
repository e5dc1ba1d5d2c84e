"""Ready-made adapters. ``showcase`` holds the classic examples used by the demo and the docs."""
