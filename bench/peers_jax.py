"""JAX peers of the train rows: the training step compiled with ``jax.jit`` (``jax-step``: one dispatch per
batch from Python) and the whole epoch in one jitted ``lax.scan`` (``jax-epoch``: gather, forward, loss,
gradient and update of every batch inside one compiled call), the strongest CPU peer the issue names.

Both start from the same weights as every other row (fastnn's initialisation, ``W`` as ``(in, out)``, as
fastnn stores it), float32, and see the same batches in the same order. The network, the loss (mean
softmax cross-entropy by log-sum-exp on index labels) and the optimizers are written out here, as a JAX
user writes them: SGD ``p -= lr g``; Adam as ``torch.optim.Adam`` and ``optax.adam`` compute it
(``m``, ``v``, bias corrections, ``lr m̂ / (sqrt(v̂) + eps)``, eps 1e-7 as the bench's other rows).
Dropout is inverted, with masks from ``jax.random`` (its own masks, as PyTorch's are its own).
Writing the update out keeps optax out of the bench's optional imports; it is the same arithmetic.
"""
from __future__ import annotations

import numpy

from fastnn.bench.machine import jax_module
from fastnn.bench.timing import Clock

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-7


def make_train_step(jax, spec):
    """``step(state, x, y) -> (state, loss)`` for ``spec``, pure, not yet jitted.

    ``state``: ``(params, m, v, t, key)`` with ``params``/``m``/``v`` lists of ``(W, b)``, ``t`` the
    number of steps taken (int32; Adam's bias correction and the dropout stream use it).
    """
    jnp = jax.numpy
    rate = float(spec["dropout"])
    opt_name, lr = spec["optimizer"]
    keep = 1.0 - rate

    def loss_fn(params, x, y, key):
        out = x
        last = len(params) - 1
        for i, (w, b) in enumerate(params):
            z = out @ w + b
            if i == last:
                out = z
                break
            out = jnp.maximum(z, 0)
            if rate:
                mask = jax.random.bernoulli(jax.random.fold_in(key, i), keep, out.shape)
                out = jnp.where(mask, out / keep, 0)
        lse = jax.nn.logsumexp(out, axis=1)
        picked = jnp.take_along_axis(out, y[:, None], axis=1)[:, 0]
        return jnp.mean(lse - picked)

    grad_fn = jax.value_and_grad(loss_fn)

    def step(state, x, y):
        params, m, v, t, key = state
        t = t + 1
        loss, grads = grad_fn(params, x, y, jax.random.fold_in(key, t))
        if opt_name == "sgd":
            params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
            return (params, m, v, t, key), loss
        b1, b2 = ADAM_BETAS
        tf = t.astype(jnp.float32)
        m = jax.tree_util.tree_map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v_, g: b2 * v_ + (1 - b2) * g * g, v, grads)
        c1, c2 = 1 - b1 ** tf, 1 - b2 ** tf
        params = jax.tree_util.tree_map(lambda p, m_, v_: p - lr * (m_ / c1) / (jnp.sqrt(v_ / c2) + ADAM_EPS),
                                        params, m, v)
        return (params, m, v, t, key), loss

    return step


def make_epoch(jax, step, batch, n_batches):
    """``epoch(state, x_all, y_all, order) -> (state, losses)``: ``n_batches`` steps in one ``lax.scan``,
    batch ``i`` gathered inside from rows ``order[i*batch:(i+1)*batch]``, not yet jitted."""
    lax, jnp = jax.lax, jax.numpy

    def epoch(state, x_all, y_all, order):
        def body(state, i):
            idx = lax.dynamic_slice_in_dim(order, i * batch, batch)
            return step(state, jnp.take(x_all, idx, axis=0), jnp.take(y_all, idx, axis=0))

        return lax.scan(body, state, jnp.arange(n_batches, dtype=jnp.int32))

    return epoch


def jax_device(jax, kind):
    """JAX's first ``"cpu"`` or ``"gpu"`` device, or None when it has none of that kind."""
    try:
        devices = jax.devices(kind)
    except RuntimeError:  # no backend of that kind in this jaxlib
        return None
    return devices[0] if devices else None


def initial_state(jax, weights, seed=0, device=None):
    """``(params, m, v, t, key)`` from fastnn's ``get_weights()`` list ``[W1, b1, ...]``, committed to
    ``device`` (default: JAX's first CPU device), so that every step runs there."""
    jnp = jax.numpy
    params = [(jnp.asarray(w, dtype=jnp.float32), jnp.asarray(b, dtype=jnp.float32))
              for w, b in zip(weights[0::2], weights[1::2])]
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = params, zeros, jax.tree_util.tree_map(jnp.zeros_like, params), jnp.int32(0), jax.random.key(seed)
    return jax.device_put(state, device or jax_device(jax, "cpu"))


class JaxStepImpl:
    """``jax-step``: the step jitted (state donated, so parameters update in place), one call per batch
    from a Python loop; the epoch's losses stay on the device and the epoch ends by waiting for its
    last step (``block_until_ready``), so the clock sees the work, not the asynchronous dispatch."""

    def __init__(self, name, spec, weights, batches, device="cpu"):
        jax = jax_module()
        if jax is None:
            raise ImportError("jax is not installed")
        self.name, self.jax = name, jax
        self.clock = Clock("cpu")  # host time around block_until_ready: the device's work, on either kind
        self.device = jax_device(jax, device)
        if self.device is None:
            raise RuntimeError(f"JAX has no {device} device here")
        self.state = initial_state(jax, weights, device=self.device)
        self.step_fn = jax.jit(make_train_step(jax, spec), donate_argnums=0)
        self.batches = [jax.device_put((x, y.astype(numpy.int32)), self.device) for x, y in batches]
        self.first_loss = None

    def step(self, x, y):
        self.state, loss = self.step_fn(self.state, x, y)
        return float(loss)

    def epoch(self):
        loss = None
        for x, y in self.batches:
            self.state, loss = self.step_fn(self.state, x, y)
        self.jax.block_until_ready((self.state, loss))

    def params(self):
        """The current weights as host arrays, in ``get_weights()`` order."""
        return [numpy.asarray(a) for wb in self.state[0] for a in wb]


class JaxEpochImpl(JaxStepImpl):
    """``jax-epoch``: the whole epoch (gather, forward, loss, gradient, update of every batch) in one
    jitted ``lax.scan``, compiled ahead of the timed rounds (``prepare``); the batches are the same rows
    in the same order as the other implementations'. ``step`` (warm-up, first loss) is the scan's body."""

    def __init__(self, name, spec, weights, batches, device="cpu"):
        super().__init__(name, spec, weights, batches, device)
        jnp = self.jax.numpy
        batch = len(batches[0][0])
        self.x_all = jnp.concatenate([x for x, _ in self.batches])
        self.y_all = jnp.concatenate([y for _, y in self.batches])
        self.order = self.jax.device_put(jnp.arange(len(batches) * batch, dtype=jnp.int32), self.device)
        self.epoch_fn = self.jax.jit(make_epoch(self.jax, make_train_step(self.jax, spec), batch, len(batches)),
                                     donate_argnums=0)
        self.losses = None

    def prepare(self):
        """Compile the epoch for these shapes now (outside the timed rounds), without running it."""
        self.epoch_fn = self.epoch_fn.lower(self.state, self.x_all, self.y_all, self.order).compile()

    def epoch(self):
        self.state, self.losses = self.epoch_fn(self.state, self.x_all, self.y_all, self.order)
        self.jax.block_until_ready((self.state, self.losses))
