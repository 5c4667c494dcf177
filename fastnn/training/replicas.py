"""Data parallelism at the start of ``fit``: every rank checks it runs the same model and the same
``fit`` call, then starts from rank 0's parameters, optimizer state and seeds."""
from __future__ import annotations

import json

import numpy

from fastnn import distributed
from fastnn.layers.core import Dropout

__all__ = ["sync_replicas"]


def _settings(layer):
    """A layer's configuration as ranks compare it: without its name and dropout seed (rank 0's seeds
    are broadcast), which may differ between ranks running one script."""
    try:
        cfg = layer.get_config()
    except Exception:  # a user layer without get_config: its class and shapes are compared all the same
        return type(layer).__name__
    return _plain({k: v for k, v in cfg.items() if k not in ("name", "seed", "seed_drawn")})


def _plain(value):
    """``value`` as JSON-able data: an object a config holds (a user's initializer) becomes its class name,
    never a repr with a memory address that would differ between ranks."""
    return json.loads(json.dumps(value, sort_keys=True, default=lambda o: type(o).__name__))


def sync_replicas(model, comm, rng, settings=None):
    """Make every rank start from rank 0's parameters, optimizer state and seeds, and check it.

    The architecture, compile settings and ``fit``'s ``settings`` are compared first, in one
    gather (``distributed.agree``: a rank with another model or other settings fails clearly on
    every rank instead of hanging in a collective of the wrong size), then everything is
    broadcast and checksummed.
    """
    opt = model.optimizer
    loss = model.loss
    graph = getattr(model, "graph_config", None)
    described = {"dtype": str(model.dtype), "layers": repr([type(layer).__name__ for layer in model.layers]),
                 "weights": repr(model.weight_shapes()),
                 # each layer's settings (activation, dropout rate, ...) and a functional model's wiring: ranks
                 # computing different functions would all-reduce gradients of different models silently
                 "layer settings": repr([_settings(layer) for layer in model.layers]),
                 "graph": repr(graph() if graph is not None else None),
                 "optimizer": f"{type(opt).__name__}({opt.get_config() if hasattr(opt, 'get_config') else ''})",
                 "loss": repr((getattr(loss, "name", type(loss).__name__),
                               _plain(loss.get_config()) if hasattr(loss, "get_config") else None)),
                 # a metric's settings too: AUC's counts are summed over ranks, so their sizes must agree
                 "metrics": repr([(type(m).__name__, _plain(m.get_config())) for m in model.metrics])}
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
