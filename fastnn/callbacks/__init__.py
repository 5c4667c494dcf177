"""Callbacks: one protocol, Keras 3's hooks and signatures.

``on_train_begin(logs)``, ``on_train_end(logs)``, ``on_epoch_begin(epoch, logs)``,
``on_epoch_end(epoch, logs)``, ``on_train_batch_begin(batch, logs)``, ``on_train_batch_end(batch, logs)``
(whose defaults call the older names ``on_batch_begin``/``on_batch_end``, as in Keras), and for
``evaluate`` (also the validation at each epoch's end) and ``predict``: ``on_test_begin(logs)``,
``on_test_batch_begin(batch, logs)``, ``on_test_batch_end(batch, logs)``, ``on_test_end(logs)``,
``on_predict_begin``, ``on_predict_batch_begin``, ``on_predict_batch_end(batch, {"outputs": ...})``,
``on_predict_end``. ``self.model`` is the model being trained; setting ``model.stop_training = True``
(in any hook) ends training after the current batch; ``model.stop_evaluating`` and
``model.stop_predicting`` do the same for ``evaluate`` and ``predict``. Batch logs are computed
lazily: reading ``logs["loss"]`` in ``on_train_batch_end`` costs one device sync, and callbacks
that do not read them cost none. A batch hook that no callback overrides costs nothing per batch.

Where they live: ``base`` (the protocol), ``progress`` (``History``, ``ProgressBar``, plots),
``control`` (early stopping, learning-rate callbacks, NaN guard, CSV, lambdas), ``backup``
(``BackupAndRestore``, ``ModelCheckpoint``). ``fit`` treats every callback alike: a plug-in sees
the run only through its hooks, ``self.model`` and ``self.model.training_loop``.
"""
from fastnn.callbacks.backup import BackupAndRestore, ModelCheckpoint
from fastnn.callbacks.base import HOOKS, Callback, CallbackList
from fastnn.callbacks.control import (CSVLogger, EarlyStopping, LambdaCallback, LearningRateScheduler,
                                      ReduceLROnPlateau, TerminateOnNaN)
from fastnn.callbacks.progress import History, PlotCurves, ProgressBar, plot_history

__all__ = [
    "Callback", "CallbackList", "History", "ProgressBar", "EarlyStopping", "LearningRateScheduler",
    "ReduceLROnPlateau", "TerminateOnNaN", "CSVLogger", "LambdaCallback", "PlotCurves", "plot_history",
    "BackupAndRestore", "ModelCheckpoint", "HOOKS",
]
