"""The book's ``common/multi_layer_net_extend.py``: ``MultiLayerNetExtend`` (weight decay, Dropout, batch norm)."""
from __future__ import annotations

from fastnn.book._engine import check_ratio
from fastnn.book._net import BookNet
from fastnn.book.multi_layer_net import build_layers, check_args

__all__ = ["MultiLayerNetExtend"]


class MultiLayerNetExtend(BookNet):
    """``MultiLayerNet`` with optional batch normalization after each hidden ``Affine`` and Dropout
    after each activation: ``Affine -> [BatchNorm] -> activation -> [Dropout]``.

    Parameters as ``MultiLayerNet``, plus ``use_dropout``, ``dropout_ration`` (the book's spelling;
    the ratio of the book's non-inverted ``Dropout``) and ``use_batchnorm`` (``params`` then hold
    ``gamma1, beta1, ...`` for the hidden layers). ``predict``/``loss`` take ``train_flg=False``:
    pass ``True`` for training-mode Dropout and batch statistics, as ``gradient`` does. Arguments
    are checked as ``MultiLayerNet``'s, and ``dropout_ration`` must be in [0, 1).
    """

    def __init__(self, input_size, hidden_size_list, output_size, activation="relu", weight_init_std="relu",
                 weight_decay_lambda=0, use_dropout=False, dropout_ration=0.5, use_batchnorm=False, *,
                 seed=None, dtype="float64", backend=None):
        owner = type(self).__name__
        check_args(owner, input_size, hidden_size_list, output_size, activation, weight_init_std, weight_decay_lambda)
        check_ratio(owner, "dropout_ration", dropout_ration)
        self.input_size = input_size
        self.output_size = output_size
        self.hidden_size_list = hidden_size_list
        self.hidden_layer_num = len(hidden_size_list)
        self.use_dropout = use_dropout
        self.weight_decay_lambda = weight_decay_lambda
        self.use_batchnorm = use_batchnorm
        self._start(seed, dtype, backend)
        build_layers(self, activation, weight_init_std, use_batchnorm, use_dropout, dropout_ration)

    def predict(self, x, train_flg=False):
        """Scores (before softmax) of ``x``; ``train_flg=True`` for training-mode Dropout and batch norm."""
        return self._predict(x, train_flg)

    def loss(self, x, t, train_flg=False):
        """Mean cross-entropy against ``t`` plus ``0.5 * lambda * sum(W^2)``."""
        return self._loss(x, t, train_flg)

    def accuracy(self, x, t):
        return self._accuracy(x, t, False) / float(x.shape[0])

    def numerical_gradient(self, x, t):
        """Central-difference gradients of ``loss(x, t, train_flg=True)`` (W, b, and gamma, beta with batch norm)."""
        return self._numerical_gradient(x, t, list(self.params), True)

    def gradient(self, x, t):
        """Back-propagated gradients of ``loss(x, t, train_flg=True)``."""
        return self._gradient(x, t, True)
