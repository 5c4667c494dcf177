"""What fastnn's training rows are timed against: the book's network class on fastnn's kernels, a plain
NumPy "from scratch" network, PyTorch eager (CPU or CUDA), PyTorch with ``torch.compile`` (CPU),
PyTorch with the step in one CUDA graph, and the GEMM floor (the epoch's matmuls alone); the JAX peers
are in ``fastnn.bench.peers_jax``. Each has ``name``, ``clock``, ``first_loss``, ``epoch()``
and (all but the floor) ``batches`` and ``step(x, y)``."""
from __future__ import annotations

import numpy

from fastnn.bench.hardware import gemm_case
from fastnn.bench.models import CLASSES, IN_FEATURES, layer_dims, model_gemms
from fastnn.bench.timing import Clock, clock_for


class BookImpl:
    """The book's ``MultiLayerNetExtend`` (float32) trained with ``opt.update(net.params, net.gradient(x, t))``."""

    def __init__(self, name, spec, backend, weights, batches):
        from fastnn import get_ops, optimizers
        from fastnn.networks import MultiLayerNetExtend

        self.name = name
        self.ops = get_ops(backend)
        self.clock = clock_for(self.ops)
        self.net = MultiLayerNetExtend(IN_FEATURES, list(spec["hidden"]), CLASSES, use_dropout=bool(spec["dropout"]),
                                       dropout_ration=spec["dropout"] or 0.5, dtype="float32", backend=backend)
        for i, (w, b) in enumerate(zip(weights[0::2], weights[1::2]), start=1):
            self.net.params[f"W{i}"][...] = self.ops.asarray(w)
            self.net.params[f"b{i}"][...] = self.ops.asarray(b)
        opt_name, lr = spec["optimizer"]
        self.opt = optimizers.SGD(lr) if opt_name == "sgd" else optimizers.Adam(lr)
        self.batches = [(self.ops.asarray(x), self.ops.asarray(y)) for x, y in batches]
        self.first_loss = None

    def step(self, x, y):
        self.opt.update(self.net.params, self.net.gradient(x, y))
        return self.net.last_layer.loss

    def epoch(self):
        for x, y in self.batches:
            self.opt.update(self.net.params, self.net.gradient(x, y))


class ScratchImpl:
    """The network as a "from scratch" learner writes it in plain NumPy (the book's Affine, Relu with a
    boolean mask, inverted Dropout, SoftmaxWithLoss and its SGD/Adam over a dict), float32 throughout:
    the baseline that the prototype numbers in the issue were measured against."""

    def __init__(self, name, spec, weights, batches):
        self.name = name
        self.clock = Clock("cpu")
        self.params = {}
        for i, (w, b) in enumerate(zip(weights[0::2], weights[1::2]), start=1):
            self.params[f"W{i}"], self.params[f"b{i}"] = w.copy(), b.copy()
        self.n_layers = len(weights) // 2
        self.rate = spec["dropout"]
        opt_name, self.lr = spec["optimizer"]
        self.adam = opt_name != "sgd"
        self.m = {k: numpy.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: numpy.zeros_like(v) for k, v in self.params.items()}
        self.t = 0
        self.rng = numpy.random.default_rng(0)
        self.batches = batches
        self.first_loss = None

    def step(self, x, y):
        p, n = self.params, x.shape[0]
        cache, out = [], x
        for i in range(1, self.n_layers + 1):
            z = out @ p[f"W{i}"] + p[f"b{i}"]
            if i == self.n_layers:
                cache.append((out, None, None))
                out = z
                break
            mask = z <= 0
            a = z.copy()
            a[mask] = 0
            drop = None
            if self.rate:
                drop = (self.rng.random(a.shape, dtype=numpy.float32) > self.rate) / numpy.float32(1 - self.rate)
                a = a * drop
            cache.append((out, mask, drop))
            out = a
        e = numpy.exp(out - out.max(axis=1, keepdims=True))
        prob = e / e.sum(axis=1, keepdims=True)
        loss = -numpy.log(prob[numpy.arange(n), y] + 1e-7).mean()
        dout = prob
        dout[numpy.arange(n), y] -= 1
        dout /= n
        grads = {}
        for i in range(self.n_layers, 0, -1):
            inp, mask, drop = cache[i - 1]
            grads[f"W{i}"], grads[f"b{i}"] = inp.T @ dout, dout.sum(axis=0)
            if i == 1:
                break
            dout = dout @ p[f"W{i}"].T
            prev_mask, prev_drop = cache[i - 2][1], cache[i - 2][2]
            if prev_drop is not None:
                dout = dout * prev_drop
            dout[prev_mask] = 0
        if self.adam:  # the book's Adam, array by array
            self.t += 1
            lr_t = self.lr * numpy.sqrt(1.0 - 0.999 ** self.t) / (1.0 - 0.9 ** self.t)
            for k in p:
                self.m[k] += (1 - 0.9) * (grads[k] - self.m[k])
                self.v[k] += (1 - 0.999) * (grads[k] ** 2 - self.v[k])
                p[k] -= numpy.float32(lr_t) * self.m[k] / (numpy.sqrt(self.v[k]) + numpy.float32(1e-7))
        else:
            for k in p:
                p[k] -= numpy.float32(self.lr) * grads[k]
        return loss

    def epoch(self):
        for x, y in self.batches:
            self.step(x, y)


class TorchImpl:
    """The same network in PyTorch eager mode, from the same initial weights and batches."""

    def __init__(self, name, spec, weights, batches, device="cpu"):
        import torch

        self.name = name
        self.torch = torch
        self.device = device
        self.clock = Clock("torch-cuda" if device != "cpu" else "cpu")
        layers = []
        dims = layer_dims(spec)
        linears = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            lin = torch.nn.Linear(a, b)
            linears.append(lin)
            layers.append(lin)
            if i < len(dims) - 2:
                layers.append(torch.nn.ReLU())
                if spec["dropout"]:
                    layers.append(torch.nn.Dropout(spec["dropout"]))
        with torch.no_grad():
            for lin, (w, b) in zip(linears, zip(weights[0::2], weights[1::2])):
                lin.weight.copy_(torch.from_numpy(numpy.ascontiguousarray(w.T)))
                lin.bias.copy_(torch.from_numpy(b))
        self.model = torch.nn.Sequential(*layers).to(device)
        self.model.train()
        opt_name, lr = spec["optimizer"]
        self.opt = (torch.optim.SGD(self.model.parameters(), lr=lr) if opt_name == "sgd"
                    else torch.optim.Adam(self.model.parameters(), lr=lr, eps=1e-7))
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.batches = [(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)) for x, y in batches]
        self.first_loss = None

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss.item()

    def epoch(self):
        for x, y in self.batches:
            self.step(x, y)


class TorchCompileImpl(TorchImpl):
    """PyTorch on the CPU with ``torch.compile`` (TorchInductor, default mode): the forward pass and
    the loss compiled as one function (AOTAutograd compiles its backward too) and the optimizer's
    ``step`` compiled, as PyTorch's "compiled optimizer" recipe does; same weights and batches as
    ``torch``. Compilation happens in the warm-up steps (a minute or more per model on 2 cores the
    first time; TorchInductor caches it on disk for later runs), never in the timed rounds."""

    def __init__(self, name, spec, weights, batches):
        super().__init__(name, spec, weights, batches)
        torch = self.torch
        model, loss_fn = self.model, self.loss_fn
        self.fwd_loss = torch.compile(lambda x, y: loss_fn(model(x), y))
        self.opt_step = torch.compile(self.opt.step)

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = self.fwd_loss(x, y)
        loss.backward()
        self.opt_step()
        return loss.item()


class TorchGraphImpl(TorchImpl):
    """PyTorch with the whole training step (forward, backward, optimizer) captured in one CUDA
    graph, as its "whole-network capture" recipe does: static input slots, warm-up iterations on
    a side stream, Adam with ``capturable=True``; each step copies the batch in and replays."""

    def __init__(self, name, spec, weights, batches):
        super().__init__(name, spec, weights, batches, device="cuda")
        torch = self.torch
        opt_name, lr = spec["optimizer"]
        params = list(self.model.parameters())
        self.opt = (torch.optim.SGD(params, lr=lr) if opt_name == "sgd"
                    else torch.optim.Adam(params, lr=lr, eps=1e-7, capturable=True))
        self.static_x = self.batches[0][0].clone()
        self.static_y = self.batches[0][1].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.opt.zero_grad(set_to_none=True)
                self.loss_fn(self.model(self.static_x), self.static_y).backward()
                self.opt.step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = self.loss_fn(self.model(self.static_x), self.static_y)
            self.static_loss.backward()
            self.opt.step()

    def step(self, x, y):
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        return self.static_loss.item()

    def epoch(self):
        for x, y in self.batches:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.graph.replay()


class GemmFloor:
    """The matmuls of one epoch alone, into preallocated outputs (first layer's dx excluded)."""

    def __init__(self, name, spec, batch, n_batches, xp=numpy, clock=None):
        self.name = name
        self.clock = clock or Clock("cpu")
        rng = numpy.random.default_rng(4)
        self.calls = [gemm_case(xp, m, k, n, layout, "float32", rng) for _, m, k, n, layout in model_gemms(spec, batch)]
        self.n_batches = n_batches
        self.first_loss = None

    def epoch(self):
        for _ in range(self.n_batches):
            for c in self.calls:
                c()

