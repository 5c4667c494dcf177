"""The book's ``Trainer``: mini-batches drawn with replacement, evaluated as the book's code does,
on the one training loop (``fastnn.training.loop.run_loop``)."""
from __future__ import annotations

import numpy

from fastnn.random import make_rng
from fastnn.training.loop import ReplacementSampler, run_loop

__all__ = ["Trainer"]


class Trainer:
    """The book's trainer: mini-batch SGD-family training of any network object.

    ``network`` needs ``params`` (a dict of arrays), ``gradient(x, t)`` (same keys),
    ``loss(x, t)`` and ``accuracy(x, t)``. As in the book, each step draws ``mini_batch_size``
    samples with replacement, updates, and records the loss (``train_loss_list``); at the first
    step of each epoch it records train and test accuracy (``train_acc_list``,
    ``test_acc_list``), on ``evaluate_sample_num_per_epoch`` samples when given. One "epoch" is
    ``max(train_size // mini_batch_size, 1)`` steps.
    """

    def __init__(self, network, x_train, t_train, x_test, t_test, epochs=20, mini_batch_size=100,
                 optimizer="SGD", optimizer_param=None, evaluate_sample_num_per_epoch=None, verbose=True,
                 seed=None, callbacks=None):
        from fastnn import optimizers
        from fastnn.backend import current

        for name in ("params", "gradient", "loss", "accuracy"):
            if not hasattr(network, name):
                raise TypeError(f"Trainer: network must have params, gradient(x, t), loss(x, t) and accuracy(x, t); "
                                f"{type(network).__name__} has no {name}")
        if len(x_train) != len(t_train) or len(x_test) != len(t_test):
            raise ValueError(f"Trainer: x and t lengths differ: train {len(x_train)} vs {len(t_train)}, "
                             f"test {len(x_test)} vs {len(t_test)}")
        if isinstance(mini_batch_size, bool) or not isinstance(mini_batch_size, (int, numpy.integer)) or mini_batch_size <= 0:
            raise ValueError(f"Trainer: mini_batch_size must be a positive integer, got {mini_batch_size!r}")
        self.network = network
        self.verbose = verbose
        self.epochs = int(epochs)
        self.batch_size = int(mini_batch_size)
        self.evaluate_sample_num_per_epoch = evaluate_sample_num_per_epoch
        self.optimizer = optimizers.get(optimizer, **(optimizer_param if optimizer_param is not None else {"lr": 0.01}))
        self.ops = getattr(network, "ops", None) or current()
        self.x_train, self.t_train = self.ops.asarray(x_train), self.ops.asarray(t_train)
        self.x_test, self.t_test = self.ops.asarray(x_test), self.ops.asarray(t_test)
        self.train_size = len(x_train)
        self.iter_per_epoch = max(self.train_size // self.batch_size, 1)
        self.max_iter = self.epochs * self.iter_per_epoch
        if seed is None and getattr(network, "seed", None) is not None:
            # no seed of its own: follow the network's, so a seeded network trains the same twice
            seed = numpy.random.default_rng([int(network.seed), 0x7472616E]).integers(2**63 - 1)
        self.rng = make_rng(seed)
        self.callbacks = list(callbacks or [])
        self.current_iter = 0
        self.current_epoch = 0
        self.train_loss_list, self.train_acc_list, self.test_acc_list = [], [], []
        self.stop_training = False

    def _evaluate(self):
        x_tr, t_tr, x_te, t_te = self.x_train, self.t_train, self.x_test, self.t_test
        k = self.evaluate_sample_num_per_epoch
        if k is not None:
            x_tr, t_tr, x_te, t_te = x_tr[:k], t_tr[:k], x_te[:k], t_te[:k]
        return float(self.network.accuracy(x_tr, t_tr)), float(self.network.accuracy(x_te, t_te))

    def train_step(self, idx):
        idx = self.ops.asarray(idx) if self.ops.device_arrays else idx
        x_batch, t_batch = self.x_train[idx], self.t_train[idx]
        grads = self.network.gradient(x_batch, t_batch)
        self.optimizer.update(self.network.params, grads)
        loss = self.network.loss(x_batch, t_batch)
        self.train_loss_list.append(float(loss))
        if self.verbose:
            print(f"train loss:{float(loss)}")
        if self.current_iter % self.iter_per_epoch == 0:
            self.current_epoch += 1
            train_acc, test_acc = self._evaluate()
            self.train_acc_list.append(train_acc)
            self.test_acc_list.append(test_acc)
            if self.verbose:
                print(f"=== epoch:{self.current_epoch}, train acc:{train_acc}, test acc:{test_acc} ===")
        self.current_iter += 1
        n = self.ops.xp.asarray(len(idx), dtype=numpy.float64)
        return {"loss": self.ops.xp.asarray(float(loss), dtype=numpy.float64) * n}

    def train(self):
        """Run ``epochs`` epochs; prints and returns the final test accuracy."""
        sampler = ReplacementSampler(self.train_size, self.batch_size, self.iter_per_epoch, self.rng)
        run_loop(self, sampler, self.train_step, epochs=self.epochs, callbacks=self.callbacks)
        test_acc = float(self.network.accuracy(self.x_test, self.t_test))
        if self.verbose:
            print("=============== Final Test Accuracy ===============")
            print(f"test acc:{test_acc}")
        self.test_acc = test_acc
        return test_acc

    def get_weights(self):
        return [self.ops.asnumpy(p).copy() for p in self.network.params.values()]

    def set_weights(self, weights):
        for p, w in zip(self.network.params.values(), weights):
            p[...] = self.ops.asarray(w)
