"""The ``train`` section: models A, B512, B64 (or those asked for) trained one epoch per repeat by every
implementation, interleaved with its peers (``fastnn.bench.peers``, ``fastnn.bench.peers_jax``) and the
GEMM floor. A peer whose package is not installed (PyTorch, JAX: never dependencies of fastnn), that a
flag turns off, or that fails to compile is listed with the reason instead of a time. The CPU peers run
in worker processes of their own (``fastnn.bench.isolated``), timed in the same interleaved rounds."""
from __future__ import annotations

import math
import statistics

import numpy

from fastnn.bench import timing
from fastnn.bench.machine import jax_module, torch_module, why_missing
from fastnn.bench.models import (CLASSES, DATA_SEED, IN_FEATURES, MODELS, build_model, layer_dims, model_gemms,
                                 param_count, synthetic_mnist)
from fastnn.bench.isolated import Isolated, IsolatedError
from fastnn.bench.peers import BookImpl, GemmFloor, ScratchImpl, TorchGraphImpl, TorchImpl
from fastnn.bench.peers_jax import JaxEpochImpl, JaxStepImpl, jax_device
from fastnn.bench.timing import Clock, clock_for, stats


class FastnnImpl:
    """fastnn's ``Sequential`` on one backend, one ``fit`` call per epoch (``cuda_graph``: the ``cupy-graph`` row)."""

    def __init__(self, name, spec, backend, weights, batches, cuda_graph=False):
        from fastnn import get_ops

        self.name = name
        self.cuda_graph = cuda_graph
        self.ops = get_ops(backend)
        self.clock = clock_for(self.ops)
        self.model = build_model(spec, backend)
        self.model.set_weights(weights)
        self.batches = [(self.ops.asarray(x), self.ops.asarray(y)) for x, y in batches]
        self.batch = len(batches[0][0])
        self.x_epoch = self.ops.xp.concatenate([x for x, _ in self.batches])
        self.y_epoch = self.ops.xp.concatenate([y for _, y in self.batches])
        self.first_loss = None

    def step(self, x, y):
        return self.model.train_on_batch(x, y)

    def epoch(self):
        # what users run: one fit() call per epoch (inputs validated once, then the fused loop)
        # (with cuda_graph, the step captured in the first call is replayed by the later ones)
        self.model.fit(self.x_epoch, self.y_epoch, batch_size=self.batch, epochs=1, shuffle=False, verbose=0,
                       cuda_graph=self.cuda_graph)


GPU_IMPLS = ("cupy", "cupy-graph", "torch-cuda", "torch-cuda-graph")
CPU_PEERS = ("torch", "torch-compile", "jax-step", "jax-epoch")  # optional: a row with a reason when absent
GPU_PEERS = ("jax-gpu-step", "jax-gpu-epoch")  # optional on a GPU (JAX with its CUDA plugin): no row when absent
RATIOS = (("vs_numpy", "numpy"), ("vs_torch", "torch"), ("vs_torch_cuda", "torch-cuda"), ("vs_jax_epoch", "jax-epoch"))


def run_train(settings, backends, ctx, models, with_torch=True, batch_override=None, gpu_only=False,
              with_jax=True, with_compile=True):
    torch = torch_module() if with_torch else None
    jax = jax_module() if with_jax else None
    out = {"data": None, "models": {}, "torch": torch.__version__ if torch is not None else None,
           "jax": jax.__version__ if jax is not None else None}
    absent = {} if gpu_only else peers_absent(torch, jax, with_torch, with_jax, with_compile)
    x_all, y_all = synthetic_mnist(settings.train_samples)
    out["data"] = {"samples": settings.train_samples, "features": IN_FEATURES, "classes": CLASSES,
                   "seed": DATA_SEED, "dtype": "float32",
                   "how": "pixels uniform in [0, 1), labels uniform in 0..9 (numpy default_rng)"}
    for name in models:
        spec = dict(MODELS[name])
        if batch_override:
            spec["batch"] = batch_override
        batches = epoch_batches(x_all, y_all, spec["batch"], settings.train_samples)
        weights = build_model(spec, "numpy").get_weights()
        cpu = not gpu_only  # --gpu-only: no CPU rows (they would take minutes at GPU sizes)
        impls = implementations(name, spec, backends, weights, batches, torch, cpu, out, jax, with_compile)
        floors = gemm_floors(spec, backends, len(batches), cpu)
        unavailable = dict(absent)
        try:
            ready = warm_up(impls, floors, settings.warmup_steps, unavailable)
            samples, loads = timing.POLICY.run(settings.repeats, lambda: {
                impl.name: impl.clock.time(impl.epoch, 1) for impl in ready + floors})
        finally:
            close(impls)
        out["models"][name] = model_record(spec, len(batches), ready, samples, loads)
        out["models"][name]["unavailable"] = unavailable
    return out


def peers_absent(torch, jax, with_torch, with_jax, with_compile):
    """``{row: reason}`` for the optional CPU peers that will not run: not installed, or turned off."""
    absent = {}
    if torch is None:
        why = "off (--no-torch)" if not with_torch else why_missing("torch") or "not installed"
        absent["torch"] = absent["torch-compile"] = why
    elif not with_compile:
        absent["torch-compile"] = "off (--no-torch-compile)"
    if jax is None:
        why = "off (--no-jax)" if not with_jax else why_missing("jax") or "not installed"
        absent["jax-step"] = absent["jax-epoch"] = why
    return absent


def epoch_batches(x_all, y_all, bs, train_samples):
    """One epoch of full batches of ``bs``; a single batch of repeated data when there are fewer samples."""
    n_batches = max(1, train_samples // bs)
    batches = [(x_all[i * bs:(i + 1) * bs], y_all[i * bs:(i + 1) * bs]) for i in range(n_batches)]
    if n_batches * bs > train_samples:  # tiny runs: reuse the data
        reps = math.ceil(bs / train_samples)
        xx, yy = numpy.tile(x_all, (reps, 1))[:bs], numpy.tile(y_all, reps)[:bs]
        batches = [(xx, yy)]
    return batches


def implementations(name, spec, backends, weights, batches, torch, cpu, out, jax=None, with_compile=True):
    """fastnn on each backend (and ``cupy-graph``) and its peers, from the same weights and batches; a
    PyTorch CUDA graph that cannot capture lands in ``out["skipped"]``."""
    impls = [FastnnImpl(be, spec, be, weights, batches) for be in backends if cpu or be == "cupy"]
    if "cupy" in backends:
        impls.append(FastnnImpl("cupy-graph", spec, "cupy", weights, batches, cuda_graph=True))
    if cpu:
        impls.append(ScratchImpl("numpy-scratch", spec, weights, batches))
    if cpu and "numba" in backends:  # the book's network class on the same kernels (issue: within 1.2x)
        impls.append(BookImpl("numba-book", spec, "numba", weights, batches))
    if torch is not None:
        if cpu:  # CPU peers in workers of their own (fastnn.bench.isolated: their spinning pools)
            impls.append(_peer("torch_module", "TorchImpl", "torch", spec, weights, batches))
            if with_compile:
                impls.append(_peer("torch_module", "TorchCompileImpl", "torch-compile", spec, weights, batches))
        if "cupy" in backends and torch.cuda.is_available():
            impls.append(TorchImpl("torch-cuda", spec, weights, batches, device="cuda"))
            try:
                impls.append(TorchGraphImpl("torch-cuda-graph", spec, weights, batches))
            except Exception as exc:  # noqa: BLE001 - a peer that cannot capture is reported, not fatal
                out.setdefault("skipped", {})[f"{name}/torch-cuda-graph"] = f"{type(exc).__name__}: {exc}"
    if jax is not None and cpu:
        impls.append(_peer("jax_module", "JaxStepImpl", "jax-step", spec, weights, batches))
        impls.append(_peer("jax_module", "JaxEpochImpl", "jax-epoch", spec, weights, batches))
    if jax is not None and "cupy" in backends and jax_device(jax, "gpu") is not None:
        impls.append(JaxStepImpl("jax-gpu-step", spec, weights, batches, device="gpu"))
        impls.append(JaxEpochImpl("jax-gpu-epoch", spec, weights, batches, device="gpu"))
    return impls


class _Failed:
    """A CPU peer whose worker could not build it: ``warm_up`` reports its error as it does for any
    peer that fails (the row lists the reason)."""

    def __init__(self, name, error):
        self.name, self.error, self.batches, self.first_loss = name, error, [(0, None)], None

    def step(self, *_):
        raise self.error


def _peer(prelude, cls, name, spec, weights, batches):
    """The CPU peer ``cls`` (``fastnn.bench.peers`` or ``peers_jax``) built in a worker process."""
    module = "fastnn.bench.peers_jax" if cls.startswith("Jax") else "fastnn.bench.peers"
    try:
        return Isolated(prelude, module, cls, name, spec, weights, batches)
    except IsolatedError as exc:
        return _Failed(name, exc)


def close(impls):
    """End the workers of the isolated peers."""
    for impl in impls:
        if isinstance(impl, Isolated):
            impl.close()


def gemm_floors(spec, backends, n_batches, cpu):
    floors = [GemmFloor("gemm-floor", spec, spec["batch"], n_batches)] if cpu else []
    if "cupy" in backends:
        import cupy

        floors.append(GemmFloor("gemm-floor-gpu", spec, spec["batch"], n_batches, cupy, Clock("cupy")))
    return floors


def warm_up(impls, floors, steps, unavailable):
    """Compile, allocate workspaces and record each implementation's first loss; capture CUDA graphs,
    compile whole epochs (``prepare``). Returns the implementations that can be timed: an optional peer
    (``CPU_PEERS``) that fails here (torch.compile without a working C++ compiler, say) goes into
    ``unavailable`` with the error instead of ending the run."""
    ready = []
    for impl in impls:
        try:
            for i in range(steps):
                xb, yb = impl.batches[i % len(impl.batches)]
                loss = impl.step(xb, yb)
                if i == 0:
                    impl.first_loss = float(loss)
            if hasattr(impl, "prepare"):
                impl.prepare()
        except Exception as exc:  # noqa: BLE001 - an optional peer that cannot run is reported, not fatal
            if impl.name not in CPU_PEERS + GPU_PEERS:
                raise
            unavailable[impl.name] = f"failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]})"
            continue
        ready.append(impl)
    for impl in ready:
        if getattr(impl, "cuda_graph", False):
            impl.epoch()  # captures the step (and checks it against eager) outside the timed rounds
    for f in floors:
        f.epoch()
    return ready


def model_record(spec, n_batches, impls, samples, loads):
    """One model's entry of the record: samples/s per implementation, the ratios, the GEMM floors."""
    bs = spec["batch"]
    n_samples = n_batches * bs
    floor_cpu = statistics.median(samples["gemm-floor"]) if "gemm-floor" in samples else None
    floor_gpu = statistics.median(samples["gemm-floor-gpu"]) if "gemm-floor-gpu" in samples else None
    gflop = sum(2 * m * k * n for _, m, k, n, _ in model_gemms(spec, bs)) * n_batches / 1e9
    rows = {}
    for impl in impls:
        ts = samples[impl.name]
        sps = [n_samples / t for t in ts]
        floor = floor_gpu if impl.name in GPU_IMPLS else floor_cpu
        rows[impl.name] = {"samples_per_s": stats(sps), "epoch_s": stats(ts), "first_loss": impl.first_loss,
                           "epoch_over_gemm_floor": statistics.median(ts) / floor if floor else None}
    floor_row = None
    if floor_cpu:  # the floor as a row of its own: samples/s if the step cost only its GEMMs
        ts = samples["gemm-floor"]
        floor_row = {"samples_per_s": stats([n_samples / t for t in ts]), "epoch_s": stats(ts),
                     "gflops": gflop / floor_cpu}
    for key, cmp in RATIOS:
        if cmp in rows:
            for r in list(rows.values()) + ([floor_row] if floor_row else []):
                r[key] = r["samples_per_s"]["median"] / rows[cmp]["samples_per_s"]["median"]
    losses = [r["first_loss"] for r in rows.values() if r["first_loss"] is not None]
    return {
        "layers": layer_dims(spec), "dropout": spec["dropout"], "optimizer": list(spec["optimizer"]),
        "batch": bs, "batches_per_epoch": n_batches, "samples_per_epoch": n_samples,
        "params": param_count(spec), "gemm_gflop_per_epoch": gflop,
        "gemm_floor_s": floor_cpu, "gemm_floor_gflops": gflop / floor_cpu if floor_cpu else None,
        "gemm_floor_gpu_s": floor_gpu, "gemm_floor": floor_row,
        "first_loss_spread": (max(losses) - min(losses)) if losses else None,
        "other_cpu_load_per_round": loads,
        "impls": rows, "raw_epoch_s": samples}
