"""Garbage-collector tuning for the hot decode loops of both event sources."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def large_young_generation(threshold: int = 50_000) -> Iterator[None]:
    """Decoding allocates millions of short-lived objects that form no cycles; with the default young generation
    (700) the cyclic GC rescans them over and over (a third of the cost of JSON decoding). Restored afterwards."""
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], threshold), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
