"""How models train: everything between ``Sequential.fit`` and the layers.

- ``loop``: the one training loop (``run_loop``), its two batch samplers, the running loop's state
  (``LoopState``: what a checkpoint resumes), per-batch logs and the progress callbacks.
- ``step``: one model's training step (``TrainStep``): forward, loss, backward, all-reduce,
  regularizers, the fused optimizer update, the out-of-memory retry, the captured CUDA graph.
- ``fit``: ``fit`` on arrays: argument checks, data placement, the run's random streams, replicas
  (``replicas``), callbacks, then the loop; ``streams``: ``fit``/``evaluate``/``predict`` on generators
  and iterables of batches; ``weights``: ``sample_weight`` and ``class_weight``.
- ``fused_plan``: a model described as plain tables for a backend's compiled training step
  (``Ops.train_plan``), and the model's side of that step (learning rates, counters, re-planning).
- ``inference``: the evaluation and prediction loops.
- ``trainer``: the book's ``Trainer`` on the same loop.
"""
from fastnn.training.loop import (BatchLogs, EvalLogs, LoopState, ReplacementSampler, ShuffleSampler,
                                  progress_callbacks, run_loop)
from fastnn.training.step import TrainStep
from fastnn.training.trainer import Trainer

__all__ = ["ShuffleSampler", "ReplacementSampler", "LoopState", "BatchLogs", "EvalLogs", "run_loop",
           "progress_callbacks", "TrainStep", "Trainer"]
