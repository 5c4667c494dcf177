"""Seeding: one host ``numpy.random.Generator`` per model or trainer.

``seed=`` wins; else ``fastnn.set_seed(n)`` makes every later generator a child of one
``SeedSequence(n)`` (drawn in order, so a script's run is reproducible); else the seed is drawn from
NumPy's global generator, so a script that starts with ``np.random.seed(n)``, as the book's do, is
reproducible too (and one that does not gets NumPy's fresh entropy).
"""
from __future__ import annotations

import threading

import numpy

_lock = threading.Lock()
_global_seq: numpy.random.SeedSequence | None = None
_global_seed: int | None = None


def set_seed(seed: int) -> None:
    """Make every generator fastnn creates from now on (models, trainers, layers) derive from ``seed``."""
    global _global_seq, _global_seed
    if not isinstance(seed, (int, numpy.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"set_seed: seed must be a non-negative integer, got {seed!r}")
    with _lock:
        _global_seq = numpy.random.SeedSequence(int(seed))
        _global_seed = int(seed)


def global_seed():
    """The seed last given to ``set_seed``, or None."""
    return _global_seed


def make_rng(seed=None) -> numpy.random.Generator:
    """A new host generator: from ``seed`` when given (an int or a Generator), else from ``set_seed``, else
    from NumPy's global generator (``np.random.seed``)."""
    if isinstance(seed, numpy.random.Generator):
        return seed
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, (int, numpy.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        return numpy.random.default_rng(int(seed))
    with _lock:
        if _global_seq is not None:
            return numpy.random.default_rng(_global_seq.spawn(1)[0])
    return numpy.random.default_rng(int(numpy.random.randint(0, 2**63 - 1, dtype=numpy.int64)))


def draw_seed(rng: numpy.random.Generator) -> int:
    """A 63-bit integer seed drawn from ``rng`` (for dropout hashes and child generators)."""
    return int(rng.integers(0, 2**63 - 1))
