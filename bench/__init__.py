"""Benchmarks: the seed notes' hand-written recipe against this service's training path (`make bench`)."""
