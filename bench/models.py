"""The benchmark models (``MODELS``), their synthetic MNIST-shaped data and the GEMMs of one training step."""
from __future__ import annotations

import numpy

F32 = numpy.dtype(numpy.float32)

# name -> hidden widths, dropout after each hidden layer, optimizer (name, lr), batch size
MODELS = {
    "A": {"hidden": (100,), "dropout": 0.0, "optimizer": ("sgd", 0.1), "batch": 100},
    "B512": {"hidden": (512, 512), "dropout": 0.2, "optimizer": ("adam", 1e-3), "batch": 128},
    "B64": {"hidden": (64, 64), "dropout": 0.2, "optimizer": ("adam", 1e-3), "batch": 128},
    # for the GPU issue (not run by default): a GEMM-bound model
    "wide": {"hidden": (4096, 4096), "dropout": 0.2, "optimizer": ("adam", 1e-3), "batch": 128},
}
DEFAULT_MODELS = ("A", "B512", "B64")
IN_FEATURES, CLASSES = 784, 10
DATA_SEED = 0
MODEL_SEED = 0


def layer_dims(spec):
    """``[784, h1, ..., 10]``."""
    return [IN_FEATURES, *spec["hidden"], CLASSES]


def param_count(spec):
    dims = layer_dims(spec)
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


def synthetic_mnist(n, seed=DATA_SEED, dtype=F32):
    """``n`` MNIST-shaped samples: pixels uniform in [0, 1) as ``dtype``, labels uniform in 0..9 (int64)."""
    rng = numpy.random.default_rng(seed)
    x = rng.random((n, IN_FEATURES), dtype=numpy.float64).astype(dtype)
    y = rng.integers(0, CLASSES, n).astype(numpy.int64)
    return x, y


def build_model(name_or_spec, backend, dtype=F32, seed=MODEL_SEED, batch=None):
    """A compiled and built fastnn ``Sequential`` for a ``MODELS`` entry on ``backend``."""
    from fastnn import optimizers
    from fastnn.layers import Dense, Dropout
    from fastnn.models import Sequential

    spec = MODELS[name_or_spec] if isinstance(name_or_spec, str) else name_or_spec
    layers = []
    for i, h in enumerate(spec["hidden"]):
        layers.append(Dense(h, "relu", input_shape=(IN_FEATURES,) if i == 0 else None))
        if spec["dropout"]:
            layers.append(Dropout(spec["dropout"]))
    layers.append(Dense(CLASSES, "softmax"))
    model = Sequential(layers, dtype=dtype, seed=seed, backend=backend)
    opt_name, lr = spec["optimizer"]
    opt = optimizers.SGD(lr) if opt_name == "sgd" else optimizers.Adam(lr)
    model.compile(opt, "sparse_categorical_crossentropy")
    model.build()
    return model


def model_gemms(spec, batch):
    """The GEMMs of one training step as ``(label, m, k, n, layout)``.

    ``layout``: ``"nn"`` forward ``x @ W``; ``"tn"`` weight gradient ``x.T @ dz``; ``"nt"`` input
    gradient ``dz @ W.T`` (every layer but the first, whose input gradient nobody needs).
    """
    dims = layer_dims(spec)
    out = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        out.append((f"fwd {batch}x{a}@{a}x{b}", batch, a, b, "nn"))
        out.append((f"dW  {a}x{batch}@{batch}x{b}", a, batch, b, "tn"))
        if i > 0:
            out.append((f"dx  {batch}x{b}@{b}x{a}", batch, b, a, "nt"))
    return out
