"""``keras.optimizers``: fastnn's optimizers under Keras's names and defaults (``Adagrad``;
``AdamW(weight_decay=0.004)``). ``Adam`` adds ``epsilon`` after the bias correction, as PyTorch
(``fastnn.optimizers.Adam``'s docstring says where this differs from Keras early in training)."""
from fastnn import optimizers as _optimizers
from fastnn.optimizers import SGD, Adam, Adamax, Nadam, RMSprop, schedules  # noqa: F401

Adagrad = _optimizers.AdaGrad


class AdamW(_optimizers.AdamW):
    """Keras's ``AdamW``: ``weight_decay`` defaults to 0.004 (fastnn's, as PyTorch's, to 0.01)."""

    def __init__(self, lr=None, weight_decay=0.004, **kwargs):
        super().__init__(lr, weight_decay=weight_decay, **kwargs)


__all__ = ["SGD", "RMSprop", "Adam", "AdamW", "Adagrad", "Nadam", "Adamax", "schedules"]
