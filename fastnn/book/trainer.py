"""The book's ``common/trainer.py``: ``Trainer`` runs mini-batch training and records the curves."""
from __future__ import annotations

import numpy

from fastnn.book import optimizer as _optimizer
from fastnn.book._engine import book_rng

__all__ = ["Trainer"]

_OPTIMIZERS = {"sgd": _optimizer.SGD, "momentum": _optimizer.Momentum, "nesterov": _optimizer.Nesterov,
               "adagrad": _optimizer.AdaGrad, "rmsprop": _optimizer.RMSprop, "adam": _optimizer.Adam}


class Trainer:
    """Train ``network`` for ``epochs`` epochs of ``train_size / mini_batch_size`` steps, as the book:
    each step draws ``mini_batch_size`` samples *with replacement*, updates with
    ``optimizer`` (a name: sgd, momentum, nesterov, adagrad, rmsprop, adam; built with
    ``optimizer_param``), and appends the batch's loss to ``train_loss_list``. At the start of each
    epoch the train and test accuracies (on the first ``evaluate_sample_num_per_epoch`` samples,
    or all) go to ``train_acc_list`` and ``test_acc_list``.

    Batches come from NumPy's global generator as in the book, unless ``seed=`` (a keyword-only
    fastnn extra) or ``fastnn.set_seed`` gives a generator of its own.
    """

    def __init__(self, network, x_train, t_train, x_test, t_test, epochs=20, mini_batch_size=100,
                 optimizer="SGD", optimizer_param=None, evaluate_sample_num_per_epoch=None, verbose=True, *,
                 seed=None):
        self.network = network
        self.verbose = verbose
        ops = getattr(network, "ops", None)
        move = (lambda a: a if ops.owns(a) else ops.asarray(a)) if ops is not None else (lambda a: a)
        self.x_train, self.t_train = move(x_train), move(t_train)  # on the network's device once
        self.x_test, self.t_test = move(x_test), move(t_test)
        self.epochs = epochs
        self.batch_size = mini_batch_size
        self.evaluate_sample_num_per_epoch = evaluate_sample_num_per_epoch
        key = str(optimizer).lower()
        if key not in _OPTIMIZERS:
            raise ValueError(f"Trainer: unknown optimizer {optimizer!r}; valid names: {', '.join(_OPTIMIZERS)}")
        self.optimizer = _OPTIMIZERS[key](**({"lr": 0.01} if optimizer_param is None else dict(optimizer_param)))
        self.rng = book_rng(seed)
        self.train_size = x_train.shape[0]
        self.iter_per_epoch = max(self.train_size / mini_batch_size, 1)
        self.max_iter = int(epochs * self.iter_per_epoch)
        self.current_iter = 0
        self.current_epoch = 0
        self.train_loss_list = []
        self.train_acc_list = []
        self.test_acc_list = []

    def train_step(self):
        """One update on a batch drawn with replacement; evaluates at each epoch's first step."""
        batch_mask = self.rng.choice(self.train_size, self.batch_size)
        ops = getattr(self.network, "ops", None)
        if ops is not None and not isinstance(self.x_train, numpy.ndarray):
            batch_mask = ops.asarray(batch_mask)
        x_batch, t_batch = self.x_train[batch_mask], self.t_train[batch_mask]
        grads = self.network.gradient(x_batch, t_batch)
        self.optimizer.update(self.network.params, grads)
        loss = float(self.network.loss(x_batch, t_batch))
        self.train_loss_list.append(loss)
        if self.verbose:
            print("train loss:" + str(loss))
        if self.current_iter % self.iter_per_epoch == 0:
            self.current_epoch += 1
            x_tr, t_tr, x_te, t_te = self.x_train, self.t_train, self.x_test, self.t_test
            if self.evaluate_sample_num_per_epoch is not None:
                n = self.evaluate_sample_num_per_epoch
                x_tr, t_tr, x_te, t_te = x_tr[:n], t_tr[:n], x_te[:n], t_te[:n]
            train_acc = self.network.accuracy(x_tr, t_tr)
            test_acc = self.network.accuracy(x_te, t_te)
            self.train_acc_list.append(train_acc)
            self.test_acc_list.append(test_acc)
            if self.verbose:
                print(f"=== epoch:{self.current_epoch}, train acc:{train_acc}, test acc:{test_acc} ===")
        self.current_iter += 1

    def train(self):
        """Run every step, then print the final test accuracy (``verbose``)."""
        for _ in range(self.max_iter):
            self.train_step()
        test_acc = self.network.accuracy(self.x_test, self.t_test)
        if self.verbose:
            print("=============== Final Test Accuracy ===============")
            print("test acc:" + str(test_acc))
