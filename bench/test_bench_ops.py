"""pytest-benchmark: each fused primitive, one group per primitive, by backend, dtype and shape.

``pytest bench --benchmark-only`` times them; with ``--benchmark-disable`` (the default) each runs
once and the assertions make the suite a smoke test: every backend's result is compared with the
NumPy reference on the same random inputs before it is timed.
"""
import numpy
import pytest

from fastnn.bench.cli import MODELS, param_count
from fastnn.kernels import RELU
from fastnn.testing import assert_close, host

# (rows, units) of the hidden activations of each benchmark model at its batch size
SHAPES = {name: (spec["batch"], spec["hidden"][-1]) for name, spec in MODELS.items() if name != "wide"}
PARAMS = {name: param_count(spec) for name, spec in MODELS.items() if name != "wide"}
TOL = {numpy.dtype(numpy.float32): dict(rtol=1e-4, atol=1e-5), numpy.dtype(numpy.float64): dict(rtol=1e-10, atol=1e-12)}

shape_param = pytest.mark.parametrize("shape", list(SHAPES), ids=[f"{k}{SHAPES[k]}" for k in SHAPES])
size_param = pytest.mark.parametrize("model", list(PARAMS), ids=[f"{k}-{PARAMS[k]}" for k in PARAMS])


def _rand(rng, shape, dtype, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, shape).astype(dtype)


def _run(benchmark, group, fn):
    benchmark.group = group
    return benchmark(fn)


@shape_param
def test_bias_act_relu(benchmark, ops, ref, timed, dtype, shape):
    rng = numpy.random.default_rng(0)
    n, d = SHAPES[shape]
    x, b = _rand(rng, (n, d), dtype), _rand(rng, (d,), dtype)
    xd, bd, out = ops.asarray(x), ops.asarray(b), ops.alloc((n, d), dtype)
    _run(benchmark, "bias_act relu", timed(lambda: ops.bias_act(xd, bd, RELU, out=out)))
    assert out.dtype == dtype
    assert_close(out, ref.bias_act(x, b, RELU), **TOL[dtype])


@shape_param
def test_act_backward_bias_grad_relu(benchmark, ops, ref, timed, dtype, shape):
    rng = numpy.random.default_rng(1)
    n, d = SHAPES[shape]
    dout, y = _rand(rng, (n, d), dtype), numpy.maximum(_rand(rng, (n, d), dtype), 0)
    dd, yd = ops.asarray(dout), ops.asarray(y)
    dz, db = ops.alloc((n, d), dtype), ops.alloc((d,), dtype)
    _run(benchmark, "act_backward_bias_grad relu", timed(lambda: ops.act_backward_bias_grad(dd, yd, RELU, out=dz, db=db)))
    rdb = numpy.empty(d, dtype)
    rdz = ref.act_backward_bias_grad(dout, y, RELU, db=rdb)
    assert dz.dtype == db.dtype == dtype
    assert_close(dz, rdz, **TOL[dtype])
    assert_close(db, rdb, **TOL[dtype])


@shape_param
def test_softmax_xent_index(benchmark, ops, ref, timed, dtype, shape):
    rng = numpy.random.default_rng(2)
    n = SHAPES[shape][0]
    x, t = _rand(rng, (n, 10), dtype, -3, 3), rng.integers(0, 10, n).astype(numpy.int64)
    xd, td = ops.asarray(x), ops.asarray(t)
    y, dx = ops.alloc((n, 10), dtype), ops.alloc((n, 10), dtype)
    loss = _run(benchmark, "softmax_xent", timed(lambda: ops.softmax_xent(xd, td, y=y, dx=dx)))
    ry, rdx = numpy.empty((n, 10), dtype), numpy.empty((n, 10), dtype)
    rloss = ref.softmax_xent(x, t, y=ry, dx=rdx)
    assert host(loss).dtype == dtype and numpy.isfinite(host(loss))
    assert_close(loss, rloss, **TOL[dtype])
    assert_close(y, ry, **TOL[dtype])
    assert_close(dx, rdx, **TOL[dtype])


@shape_param
def test_dropout_mask(benchmark, ops, ref, timed, dtype, shape):
    n, d = SHAPES[shape]
    out = ops.alloc((n, d), dtype)
    _run(benchmark, "dropout_mask", timed(lambda: ops.dropout_mask((n, d), 0.2, 1234, 7, dtype=dtype, out=out)))
    expected = ref.dropout_mask((n, d), 0.2, 1234, 7, dtype=dtype)
    numpy.testing.assert_array_equal(host(out), expected)  # the same hash on every backend
    assert 0.7 < float((expected > 0).mean()) < 0.9


@shape_param
def test_mul(benchmark, ops, ref, timed, dtype, shape):
    rng = numpy.random.default_rng(3)
    n, d = SHAPES[shape]
    x, m = _rand(rng, (n, d), dtype), _rand(rng, (n, d), dtype)
    xd, md, out = ops.asarray(x), ops.asarray(m), ops.alloc((n, d), dtype)
    _run(benchmark, "mul", timed(lambda: ops.mul(xd, md, out=out)))
    assert_close(out, x * m, **TOL[dtype])


def _step_case(ops, ref, dtype, size, n_slots, seed):
    rng = numpy.random.default_rng(seed)
    p, g = _rand(rng, size, dtype, -0.1, 0.1), _rand(rng, size, dtype, -1e-2, 1e-2)
    slots = [_rand(rng, size, dtype, 0.0, 1e-3) for _ in range(n_slots)]
    # the timed arrays are copies: on NumPy ``asarray`` would alias the host originals
    return (p, g, slots), (ops.asarray(p.copy()), ops.asarray(g.copy()), [ops.asarray(s.copy()) for s in slots])


def _check_step(ops, ref, dtype, host_arrays, call):
    """One step on fresh copies with ``ops`` and with the reference: the same result, float dtype kept."""
    p, g, slots = host_arrays
    mine = [ops.asarray(a.copy()) for a in (p, *slots)]
    theirs = [a.copy() for a in (p, *slots)]
    call(ops, mine[0], ops.asarray(g), mine[1:])
    call(ref, theirs[0], g, theirs[1:])
    for a, b in zip(mine, theirs):
        assert a.dtype == dtype
        assert_close(a, b, **TOL[dtype])


OPTIMIZERS = {
    "sgd_step": (0, lambda o, p, g, s: o.sgd_step(p, g, 1e-3)),
    "momentum_step": (1, lambda o, p, g, s: o.momentum_step(p, g, s[0], 1e-3, 0.9)),
    "rmsprop_step": (1, lambda o, p, g, s: o.rmsprop_step(p, g, s[0], 1e-3, 0.9, 1e-7)),
    "adam_step": (2, lambda o, p, g, s: o.adam_step(p, g, s[0], s[1], 1e-3, 0.9, 0.999, 1e-7, 10)),
}


@size_param
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_step(benchmark, ops, ref, timed, dtype, model, name):
    n_slots, call = OPTIMIZERS[name]
    host_arrays, (p, g, slots) = _step_case(ops, ref, dtype, PARAMS[model], n_slots, seed=len(name))
    _check_step(ops, ref, dtype, host_arrays, call)
    _run(benchmark, name, timed(lambda: call(ops, p, g, slots)))
    assert p.dtype == dtype and bool(numpy.isfinite(host(p)).all())
    assert not numpy.array_equal(host(p), host_arrays[0])  # it did update in place
