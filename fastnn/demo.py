"""The quick-start demo: an MLP on scikit-learn's bundled 8x8 digits, on the best backend here."""
from __future__ import annotations

import time

import numpy

import fastnn
from fastnn.datasets import load_digits
from fastnn.layers import Affine, Relu, SoftmaxWithLoss


def run(backend="auto", epochs=30, seed=0, batch_size=32, lr=0.1, momentum=0.9, hidden=100):
    ops = fastnn.use(backend)
    print(f"fastnn {fastnn.__version__}: {fastnn.describe(backend)}")
    (x_train, t_train), (x_test, t_test) = load_digits()
    rng = numpy.random.default_rng(seed)
    dtype = numpy.float32
    params = {
        "W1": ops.asarray((rng.standard_normal((64, hidden)) * numpy.sqrt(2 / 64)).astype(dtype)),
        "b1": ops.alloc((hidden,), dtype),
        "W2": ops.asarray((rng.standard_normal((hidden, 10)) * numpy.sqrt(2 / hidden)).astype(dtype)),
        "b2": ops.alloc((10,), dtype),
    }
    layers = [Affine(params["W1"], params["b1"]), Relu(), Affine(params["W2"], params["b2"])]
    layers[0].skip_input_grad = True
    loss_layer = SoftmaxWithLoss()
    velocity = {k: ops.alloc(v.shape, dtype) for k, v in params.items()}
    xs, ts = ops.asarray(x_train), ops.asarray(t_train)

    def predict(x):
        for layer in layers:
            x = layer.forward(x, train_flg=False)
        return x

    def accuracy(x, t):
        return float((ops.asnumpy(predict(ops.asarray(x))).argmax(1) == t).mean())

    n = len(x_train)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(n)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            out = xs[idx]
            for layer in layers:
                out = layer.forward(out, train_flg=True)
            total += float(loss_layer.forward(out, ts[idx])) * len(idx)
            dout = loss_layer.backward()
            for layer in reversed(layers):
                dout = layer.backward(dout)
            grads = {"W1": layers[0].dW, "b1": layers[0].db, "W2": layers[2].dW, "b2": layers[2].db}
            for key in params:
                ops.momentum_step(params[key], grads[key], velocity[key], lr, momentum)
        print(f"epoch {epoch:3d}/{epochs}  loss {total / n:.4f}  train acc {accuracy(x_train, t_train):.4f}  "
              f"test acc {accuracy(x_test, t_test):.4f}  ({time.perf_counter() - start:.2f} s)")
    acc = accuracy(x_test, t_test)
    print(f"final test accuracy: {acc:.4f} on {len(x_test)} held-out digits (backend {ops.name})")
    return acc
