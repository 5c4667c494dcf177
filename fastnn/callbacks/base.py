"""The callback protocol: ``Callback`` (Keras 3's hooks and signatures) and ``CallbackList``."""
from __future__ import annotations

from fastnn import distributed

__all__ = ["Callback", "CallbackList", "HOOKS", "is_chief"]


class Callback:
    """Base class: override the hooks you need.

    ``needs_every_batch`` (True): whether ``on_train_batch_end`` must run after every batch. A
    callback that sets it False accepts one call for a run of batches (``logs["size"]`` is then
    their total), which lets ``fit`` train that run in one compiled call (as Keras's
    ``steps_per_execution`` does); fastnn's progress bar is such a callback."""

    needs_every_batch = True

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        """Keras's ``params`` of the run: ``verbose``, ``epochs``, ``steps`` (batches per epoch)."""
        self.params = params

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_batch_begin(self, batch, logs=None): pass
    def on_batch_end(self, batch, logs=None): pass

    # Keras 3: the train batch hooks' defaults call the older names, so either may be overridden.
    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs=logs)

    def on_test_begin(self, logs=None): pass
    def on_test_end(self, logs=None): pass
    def on_test_batch_begin(self, batch, logs=None): pass
    def on_test_batch_end(self, batch, logs=None): pass
    def on_predict_begin(self, logs=None): pass
    def on_predict_end(self, logs=None): pass
    def on_predict_batch_begin(self, batch, logs=None): pass
    def on_predict_batch_end(self, batch, logs=None): pass

    # fastnn: called (instead of ``on_train_end``) when ``fit`` leaves by an exception, so a
    # callback can give back what it holds (a file, a folder's lock).
    def on_train_abort(self, exception): pass


HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_batch_begin", "on_batch_end",
         "on_train_batch_begin", "on_train_batch_end", "on_test_begin", "on_test_end", "on_test_batch_begin",
         "on_test_batch_end", "on_predict_begin", "on_predict_end", "on_predict_batch_begin",
         "on_predict_batch_end", "on_train_abort")
_OLD_NAMES = {"on_train_batch_begin": "on_batch_begin", "on_train_batch_end": "on_batch_end"}


def _inherited(fn, name):
    """Whether the bound hook ``fn`` is ``Callback``'s own (does nothing, or only forwards)."""
    return getattr(fn, "__func__", None) is getattr(Callback, name, None)


class CallbackList:
    """Calls a hook on every callback, in order."""

    def __init__(self, callbacks, model):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not hasattr(cb, "on_epoch_end"):
                raise TypeError(f"callbacks must be Callback objects, got {type(cb).__name__}")
            cb.set_model(model) if hasattr(cb, "set_model") else setattr(cb, "model", model)

    def hooks(self, name):
        """The functions to call for the batch hook ``name``, looked up once per loop: only callbacks
        that override it (for the train batch hooks, it or its older name ``on_batch_*``), so the
        loop does no per-batch work for a hook nobody overrides."""
        old = _OLD_NAMES.get(name)
        found = []
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            fallback = getattr(cb, old, None) if old else None
            if fn is None or _inherited(fn, name):
                fn = fallback  # Callback's default only forwards to the older name
            if fn is not None and not _inherited(fn, old or name):
                found.append(fn)
        return found

    def every_batch(self):
        """Whether some callback's train batch hook must run after every batch (``needs_every_batch``)."""
        return bool(self.hooks("on_train_batch_begin")) or any(
            getattr(fn.__self__, "needs_every_batch", True) if hasattr(fn, "__self__") else True
            for fn in self.hooks("on_train_batch_end"))

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args):
            for cb in self.callbacks:
                fn = getattr(cb, hook, None)
                if fn is not None:
                    fn(*args)
        return call


def is_chief(model):
    """Only rank 0 writes files under data parallelism."""
    return distributed.get().rank == 0
