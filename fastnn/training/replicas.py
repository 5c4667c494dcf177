"""Data parallelism at the start of ``fit``: every rank checks it runs the same model and the same
``fit`` call, then starts from rank 0's parameters, optimizer state and seeds."""
from __future__ import annotations

import numpy

from fastnn import distributed
from fastnn.layers.core import Dropout

__all__ = ["sync_replicas"]


def sync_replicas(model, comm, rng, settings=None):
    """Make every rank start from rank 0's parameters, optimizer state and seeds, and check it.

    The architecture, compile settings and ``fit``'s ``settings`` are compared first, in one
    gather (``distributed.agree``: a rank with another model or other settings fails clearly on
    every rank instead of hanging in a collective of the wrong size), then everything is
    broadcast and checksummed.
    """
    opt = model.optimizer
    described = {"dtype": str(model.dtype), "layers": repr([type(layer).__name__ for layer in model.layers]),
                 "weights": repr(model.weight_shapes()),
                 "optimizer": f"{type(opt).__name__}({opt.get_config() if hasattr(opt, 'get_config') else ''})",
                 "loss": repr(getattr(model.loss, "name", type(model.loss).__name__)),
                 "metrics": repr([m.name for m in model.metrics])}
    distributed.agree(comm, model.name, described, settings or {},
                      hint="Run the same fit() call on every rank, with the whole data set on each: fit shards "
                           "every global batch (batch_size) across the ranks itself.")
    if opt.flat_slots is None:
        opt.build(model.flat)
    comm.bcast_(model.flat.p)
    for slot in opt.flat_slots:
        comm.bcast_(slot)
    dropouts = [layer for layer in model.layers if isinstance(layer, Dropout)]
    opt.iterations, model._step, state, seeds = comm.bcast_obj(
        (opt.iterations, model._step, rng.bit_generator.state, [layer.seed for layer in dropouts]))
    rng.bit_generator.state = state
    for layer, seed in zip(dropouts, seeds):
        layer.seed = seed
    digest = distributed.checksum(model.ops.asnumpy(model.flat.p), *(model.ops.asnumpy(s) for s in opt.flat_slots),
                                  numpy.array([opt.iterations, model._step]),
                                  numpy.frombuffer(repr((state, seeds)).encode(), dtype=numpy.uint8))
    digests = comm.allgather_obj(digest)
    if len(set(digests)) > 1:
        raise RuntimeError(f"{model.name}: replicas disagree after the broadcast from rank 0 (checksums {digests})")
