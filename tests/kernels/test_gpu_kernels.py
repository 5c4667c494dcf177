"""Every CUDA kernel against the NumPy reference (``Ops``), on random data (never zeros).

float32 and float64; odd shapes, a size whose grid-stride loops wrap (``BIG``: 128*128*2 + 3
rows, not a multiple of any block size), and a wide one whose column groups wrap the grid
(``WIDE``). Reductions are compared with looser tolerances (the summation order differs from
NumPy's pairwise sums) and, for plain sums, exactly on small-integer data, where every order
gives the same bits, so a missed or doubled element cannot hide inside a tolerance. Dropout
masks are compared bit for bit. In-place kernels get fresh copies per backend and every array
they write is compared.
"""
import numpy
import pytest

from fastnn.backend import get_ops
from fastnn.kernels import ACTIVATIONS, ELU, LEAKY_RELU, LINEAR
from fastnn.testing import ATOL, RTOL, has_gpu, host
from fastnn.backend import select

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not has_gpu(), reason="needs CuPy and a CUDA GPU: " + select.probe_cupy(0).reason)]

BIG = (128 * 128 * 2 + 3, 17)   # > 1056 blocks of 256 on an H100: the grid-stride loop wraps
WIDE = (3, 40_003)              # > 132 SMs * 8 blocks * 32 columns: the column-group loop wraps
SHAPES = [(1, 1), (7, 13), (257, 33), BIG, WIDE]
SHAPE_IDS = ["1x1", "7x13", "257x33", "big", "wide"]
# Reductions: summation order differs from NumPy's pairwise sums.
RED_RTOL = {numpy.dtype(numpy.float32): 1e-4, numpy.dtype(numpy.float64): 1e-10}
RED_ATOL = {numpy.dtype(numpy.float32): 1e-4, numpy.dtype(numpy.float64): 1e-10}
ALPHA = {LEAKY_RELU: 0.1, ELU: 0.7}


@pytest.fixture(scope="module")
def gpu():
    return get_ops("cupy")


def close(actual, expected, dtype, reduction=False):
    dtype = numpy.dtype(dtype)
    actual = host(actual)
    assert actual.dtype == dtype, f"got dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == numpy.shape(expected), f"got shape {actual.shape}, expected {numpy.shape(expected)}"
    rtol = RED_RTOL[dtype] if reduction else RTOL[dtype]
    atol = RED_ATOL[dtype] if reduction else ATOL[dtype]
    numpy.testing.assert_allclose(actual, host(expected), rtol=rtol, atol=atol)


def randn(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def small_ints(rng, shape, dtype, top=2):
    """Nonzero integers in [-top, top]: every partial sum is exact, in any order."""
    v = rng.integers(1, top + 1, size=shape) * rng.choice([-1, 1], size=shape)
    return v.astype(dtype)


# ---------------------------------------------------------------------------- activations
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("act", sorted(ACTIVATIONS.values()), ids=sorted(ACTIVATIONS, key=ACTIVATIONS.get))
def test_bias_act_matches_reference(gpu, ref, dtype, shape, act):
    rng = numpy.random.default_rng(1)
    x, b = randn(rng, shape, dtype, 3.0), randn(rng, shape[1], dtype)
    alpha = ALPHA.get(act, 0.0)
    close(gpu.bias_act(gpu.asarray(x), gpu.asarray(b), act, alpha), ref.bias_act(x, b, act, alpha), dtype)
    close(gpu.bias_act(gpu.asarray(x), None, act, alpha), ref.bias_act(x, None, act, alpha), dtype)


def test_bias_act_extreme_inputs_stay_finite(gpu, ref, dtype):
    x = numpy.array([[-1000.0, -80.0, -1e-3, 0.0, 1e-3, 80.0, 1000.0]], dtype=dtype)
    for act in ACTIVATIONS.values():
        alpha = ALPHA.get(act, 0.0)
        y = gpu.bias_act(gpu.asarray(x), None, act, alpha)
        assert numpy.isfinite(host(y)).all(), act
        close(y, ref.bias_act(x, None, act, alpha), dtype)


def test_bias_act_writes_into_out(gpu, dtype):
    rng = numpy.random.default_rng(2)
    x, b = gpu.asarray(randn(rng, (5, 4), dtype)), gpu.asarray(randn(rng, 4, dtype))
    out = gpu.alloc((5, 4), dtype)
    assert gpu.bias_act(x, b, LINEAR, out=out) is out
    close(out, host(x) + host(b), dtype)


def test_bias_act_copies_non_contiguous_input(gpu, ref, dtype):
    rng = numpy.random.default_rng(3)
    x = randn(rng, (6, 10), dtype)
    b = randn(rng, 6, dtype)
    close(gpu.bias_act(gpu.asarray(x).T, gpu.asarray(b), 1), ref.bias_act(x.T, b, 1), dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("act", sorted(ACTIVATIONS.values()), ids=sorted(ACTIVATIONS, key=ACTIVATIONS.get))
def test_act_backward_matches_reference(gpu, ref, dtype, shape, act):
    rng = numpy.random.default_rng(4)
    alpha = ALPHA.get(act, 0.0)
    z = randn(rng, shape, dtype, 3.0)  # read by gelu's and swish's derivative, ignored by the others
    y = ref.bias_act(z, None, act, alpha)
    dout = randn(rng, shape, dtype)
    dout_d = gpu.asarray(dout)
    close(gpu.act_backward(dout_d, gpu.asarray(y), act, alpha, z=gpu.asarray(z)),
          ref.act_backward(dout, y, act, alpha, z=z), dtype)
    numpy.testing.assert_array_equal(host(dout_d), dout)  # dout is not written


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_bias_grad_matches_reference(gpu, ref, dtype, shape):
    rng = numpy.random.default_rng(5)
    dz = randn(rng, shape, dtype)
    close(gpu.bias_grad(gpu.asarray(dz)), ref.bias_grad(dz), dtype, reduction=True)
    out = gpu.alloc(shape[1], dtype)
    assert gpu.bias_grad(gpu.asarray(dz), out=out) is out


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_bias_grad_exact_on_integers(gpu, ref, dtype, shape):
    dz = small_ints(numpy.random.default_rng(6), shape, dtype)
    numpy.testing.assert_array_equal(host(gpu.bias_grad(gpu.asarray(dz))), ref.bias_grad(dz))


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("act", sorted(ACTIVATIONS.values()), ids=sorted(ACTIVATIONS, key=ACTIVATIONS.get))
def test_act_backward_bias_grad_matches_reference(gpu, ref, dtype, shape, act):
    rng = numpy.random.default_rng(7)
    alpha = ALPHA.get(act, 0.0)
    z = randn(rng, shape, dtype, 3.0)
    y = ref.bias_act(z, None, act, alpha)
    dout = randn(rng, shape, dtype)
    db_ref = numpy.empty(shape[1], dtype)
    dz_ref = ref.act_backward_bias_grad(dout, y, act, alpha, db=db_ref, z=z)
    out, db = gpu.alloc(shape, dtype), gpu.alloc(shape[1], dtype)
    assert gpu.act_backward_bias_grad(gpu.asarray(dout), gpu.asarray(y), act, alpha, out=out, db=db,
                                      z=gpu.asarray(z)) is out
    close(out, dz_ref, dtype)
    close(db, db_ref, dtype, reduction=True)


@pytest.mark.parametrize("shape", [BIG, WIDE], ids=["big", "wide"])
def test_act_backward_bias_grad_exact_on_integers(gpu, ref, dtype, shape):
    dout = small_ints(numpy.random.default_rng(8), shape, dtype)
    y = numpy.ones(shape, dtype)
    db = gpu.alloc(shape[1], dtype)
    dz = gpu.act_backward_bias_grad(gpu.asarray(dout), gpu.asarray(y), LINEAR, db=db)
    numpy.testing.assert_array_equal(host(dz), dout)
    numpy.testing.assert_array_equal(host(db), dout.sum(axis=0))


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_softmax_matches_reference(gpu, ref, dtype, shape):
    x = randn(numpy.random.default_rng(9), shape, dtype, 5.0)
    close(gpu.softmax(gpu.asarray(x)), ref.softmax(x), dtype, reduction=True)


def test_softmax_large_logits_stay_finite(gpu, ref, dtype):
    x = numpy.array([[1000.0, 999.0, -1000.0], [-1e4, -1e4, -1e4]], dtype=dtype)
    close(gpu.softmax(gpu.asarray(x)), ref.softmax(x), dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_mul_matches_reference(gpu, ref, dtype, shape):
    rng = numpy.random.default_rng(10)
    x, y = randn(rng, shape, dtype), randn(rng, shape, dtype)
    out = gpu.alloc(shape, dtype)
    assert gpu.mul(gpu.asarray(x), gpu.asarray(y), out=out) is out
    numpy.testing.assert_array_equal(host(out), ref.mul(x, y))


# ---------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.9])
def test_dropout_mask_bitwise_equal_to_reference(gpu, ref, dtype, shape, rate):
    for seed, step, row0 in [(0, 0, 0), (12345, 7, 0), (2**40 + 3, 123456, 1000)]:
        expected = ref.dropout_mask(shape, rate, seed, step, row0, dtype=dtype)
        got = gpu.dropout_mask(shape, rate, seed, step, row0, dtype=dtype)
        numpy.testing.assert_array_equal(host(got), expected)
        assert host(got).dtype == dtype


def test_dropout_mask_split_rows_equal_whole(gpu, dtype):
    n, d, cut = 1001, 37, 333
    whole = host(gpu.dropout_mask((n, d), 0.4, 9, 3, dtype=dtype))
    top = host(gpu.dropout_mask((cut, d), 0.4, 9, 3, 0, dtype=dtype))
    out = gpu.alloc((n - cut, d), dtype)
    assert gpu.dropout_mask((n - cut, d), 0.4, 9, 3, cut, dtype=dtype, out=out) is out
    numpy.testing.assert_array_equal(numpy.concatenate([top, host(out)]), whole)


# ---------------------------------------------------------------------------- losses
LOSS_SHAPES = [(1, 1), (7, 13), (257, 33), (128 * 128 * 2 + 3, 10), (5, 40_003)]
LOSS_IDS = ["1x1", "7x13", "257x33", "big", "wide"]


@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=LOSS_IDS)
@pytest.mark.parametrize("targets", ["index", "onehot", "soft"])
def test_softmax_xent_matches_reference(gpu, ref, dtype, shape, targets):
    rng = numpy.random.default_rng(11)
    n, c = shape
    x = randn(rng, shape, dtype, 4.0)
    t = rng.integers(0, c, size=n)
    if targets == "onehot":
        t = numpy.eye(c, dtype=dtype)[t]
    elif targets == "soft":
        t = rng.random(shape).astype(dtype)
        t /= t.sum(axis=1, keepdims=True)
    y_ref, dx_ref = numpy.empty(shape, dtype), numpy.empty(shape, dtype)
    loss_ref = ref.softmax_xent(x, t, y=y_ref, dx=dx_ref)
    y, dx = gpu.alloc(shape, dtype), gpu.alloc(shape, dtype)
    loss = gpu.softmax_xent(gpu.asarray(x), gpu.asarray(t), y=y, dx=dx)
    assert type(loss).__module__.startswith("cupy") and loss.shape == ()
    close(loss, loss_ref, dtype, reduction=True)
    close(y, y_ref, dtype, reduction=True)
    close(dx, dx_ref, dtype, reduction=True)
    close(gpu.softmax_xent(gpu.asarray(x), gpu.asarray(t)), loss_ref, dtype, reduction=True)


def test_softmax_xent_accepts_int32_and_float_indices(gpu, ref, dtype):
    rng = numpy.random.default_rng(12)
    x = randn(rng, (9, 4), dtype)
    t = rng.integers(0, 4, size=9)
    expected = ref.softmax_xent(x, t)
    for tt in (t.astype(numpy.int32), t.astype(dtype)):
        close(gpu.softmax_xent(gpu.asarray(x), gpu.asarray(tt)), expected, dtype, reduction=True)


@pytest.mark.parametrize("shape", LOSS_SHAPES, ids=LOSS_IDS)
@pytest.mark.parametrize("onehot", [False, True], ids=["index", "onehot"])
def test_softmax_xent_backward_matches_reference(gpu, ref, dtype, shape, onehot):
    rng = numpy.random.default_rng(13)
    n, c = shape
    y = ref.softmax(randn(rng, shape, dtype))
    t = rng.integers(0, c, size=n)
    if onehot:
        t = numpy.eye(c, dtype=dtype)[t]
    for dout in (1.0, 0.37):
        close(gpu.softmax_xent_backward(gpu.asarray(y), gpu.asarray(t), dout),
              ref.softmax_xent_backward(y, t, dout), dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_sigmoid_bce_matches_reference(gpu, ref, dtype, shape):
    rng = numpy.random.default_rng(14)
    x, t = randn(rng, shape, dtype, 4.0), rng.random(shape).astype(dtype)
    y_ref, dx_ref = numpy.empty(shape, dtype), numpy.empty(shape, dtype)
    loss_ref = ref.sigmoid_bce(x, t, y=y_ref, dx=dx_ref)
    y, dx = gpu.alloc(shape, dtype), gpu.alloc(shape, dtype)
    loss = gpu.sigmoid_bce(gpu.asarray(x), gpu.asarray(t), y=y, dx=dx)
    assert loss.shape == ()
    close(loss, loss_ref, dtype, reduction=True)
    close(y, y_ref, dtype)
    close(dx, dx_ref, dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_mse_matches_reference(gpu, ref, dtype, shape):
    rng = numpy.random.default_rng(15)
    y, t = randn(rng, shape, dtype), randn(rng, shape, dtype)
    for scale in (1.0 / y.size, 0.5 / shape[0]):
        dx_ref = numpy.empty(shape, dtype)
        loss_ref = ref.mse(y, t, scale, dx=dx_ref)
        dx = gpu.alloc(shape, dtype)
        loss = gpu.mse(gpu.asarray(y), gpu.asarray(t), scale, dx=dx)
        assert loss.shape == ()
        close(loss, loss_ref, dtype, reduction=True)
        close(dx, dx_ref, dtype)


def test_mse_exact_on_integers(gpu, ref, dtype):
    rng = numpy.random.default_rng(16)
    y, t = small_ints(rng, BIG, dtype), small_ints(rng, BIG, dtype)
    numpy.testing.assert_array_equal(host(gpu.mse(gpu.asarray(y), gpu.asarray(t), 1.0)), ref.mse(y, t, 1.0))


# ---------------------------------------------------------------------------- batch normalization
@pytest.mark.parametrize("shape", [(2, 1), (7, 13), (257, 33), BIG, WIDE], ids=["2x1", "7x13", "257x33", "big", "wide"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "infer"])
def test_batchnorm_forward_matches_reference(gpu, ref, dtype, shape, train):
    rng = numpy.random.default_rng(17)
    d = shape[1]
    x = randn(rng, shape, dtype, 2.0) + dtype.type(0.5)
    gamma, beta = randn(rng, d, dtype), randn(rng, d, dtype)
    rm, rv = randn(rng, d, dtype), rng.random(d).astype(dtype) + dtype.type(0.5)
    rm_d, rv_d = gpu.asarray(rm), gpu.asarray(rv)
    y_ref, xhat_ref, inv_ref = ref.batchnorm_forward(x, gamma, beta, rm, rv, 0.9, 1e-5, train)
    out = gpu.alloc(shape, dtype)
    y, xhat, inv = gpu.batchnorm_forward(gpu.asarray(x), gpu.asarray(gamma), gpu.asarray(beta), rm_d, rv_d,
                                         0.9, 1e-5, train, out=out)
    assert y is out
    for got, want in ((y, y_ref), (xhat, xhat_ref), (inv, inv_ref), (rm_d, rm), (rv_d, rv)):
        close(got, want, dtype, reduction=True)


@pytest.mark.parametrize("shape", [(2, 1), (7, 13), (257, 33), BIG, WIDE], ids=["2x1", "7x13", "257x33", "big", "wide"])
def test_batchnorm_backward_matches_reference(gpu, ref, dtype, shape):
    rng = numpy.random.default_rng(18)
    d = shape[1]
    x = randn(rng, shape, dtype, 2.0)
    gamma, beta = randn(rng, d, dtype), randn(rng, d, dtype)
    _, xhat, inv_std = ref.batchnorm_forward(x, gamma, beta, numpy.zeros(d, dtype), numpy.ones(d, dtype),
                                             0.9, 1e-5, True)
    dout = randn(rng, shape, dtype)
    dg_ref, db_ref = numpy.empty(d, dtype), numpy.empty(d, dtype)
    dx_ref = ref.batchnorm_backward(dout, xhat, inv_std, gamma, dgamma=dg_ref, dbeta=db_ref)
    dx, dg, db = gpu.alloc(shape, dtype), gpu.alloc(d, dtype), gpu.alloc(d, dtype)
    got = gpu.batchnorm_backward(gpu.asarray(dout), gpu.asarray(xhat), gpu.asarray(inv_std), gpu.asarray(gamma),
                                 dx=dx, dgamma=dg, dbeta=db)
    assert got is dx
    close(dx, dx_ref, dtype, reduction=True)
    close(dg, dg_ref, dtype, reduction=True)
    close(db, db_ref, dtype, reduction=True)
    close(gpu.batchnorm_backward(gpu.asarray(dout), gpu.asarray(xhat), gpu.asarray(inv_std), gpu.asarray(gamma)),
          dx_ref, dtype, reduction=True)


# ---------------------------------------------------------------------------- optimizers
SIZES = [1, 7, 1000, 128 * 128 * 2 * 17 + 3]
SIZE_IDS = ["1", "7", "1000", "big"]
# clipvalue 0.3 clips most elements of a standard-normal gradient (and, with scale 2.0, more of them)
OPTIONS = [dict(), dict(weight_decay=0.01), dict(scale=0.5), dict(weight_decay=0.01, scale=2.0), dict(clipvalue=0.3),
           dict(weight_decay=0.01, scale=2.0, clipvalue=0.3)]
OPTION_IDS = ["plain", "wd", "scale", "wd+scale", "clip", "wd+scale+clip"]


def _state(rng, n, dtype, positive=False):
    s = randn(rng, n, dtype, 0.1)
    return numpy.abs(s) if positive else s


def _run_both(gpu, ref, arrays, call):
    """Run ``call(ops, *arrays)`` on fresh copies for both backends; returns (gpu arrays, ref arrays)."""
    ref_arrays = [a.copy() for a in arrays]
    gpu_arrays = [gpu.asarray(a.copy()) for a in arrays]
    call(ref, *ref_arrays)
    call(gpu, *gpu_arrays)
    return gpu_arrays, ref_arrays


def _compare_all(gpu_arrays, ref_arrays, dtype, names):
    for name, got, want in zip(names, gpu_arrays, ref_arrays):
        try:
            close(got, want, dtype)
        except AssertionError as exc:
            raise AssertionError(f"array {name} differs") from exc


@pytest.mark.parametrize("n", SIZES, ids=SIZE_IDS)
def test_sq_norm_matches_reference(gpu, ref, dtype, n):
    x = randn(numpy.random.default_rng(19), n, dtype)
    got = gpu.sq_norm(gpu.asarray(x))
    assert got.shape == ()
    close(got, ref.sq_norm(x), dtype, reduction=True)


def test_sq_norm_exact_on_integers(gpu, ref, dtype):
    x = small_ints(numpy.random.default_rng(20), SIZES[-1] // 4, dtype)
    numpy.testing.assert_array_equal(host(gpu.sq_norm(gpu.asarray(x))), ref.sq_norm(x))


@pytest.mark.parametrize("n", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
def test_sgd_step_matches_reference(gpu, ref, dtype, n, opts):
    rng = numpy.random.default_rng(21)
    arrays = [randn(rng, n, dtype), randn(rng, n, dtype)]
    got, want = _run_both(gpu, ref, arrays, lambda ops, p, g: ops.sgd_step(p, g, 0.1, **opts))
    _compare_all(got, want, dtype, ["p", "g"])


@pytest.mark.parametrize("n", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("nesterov", [False, True], ids=["classic", "nesterov"])
def test_momentum_step_matches_reference(gpu, ref, dtype, n, opts, nesterov):
    rng = numpy.random.default_rng(22)
    arrays = [randn(rng, n, dtype), randn(rng, n, dtype), _state(rng, n, dtype)]
    got, want = _run_both(gpu, ref, arrays,
                          lambda ops, p, g, v: ops.momentum_step(p, g, v, 0.1, 0.9, nesterov=nesterov, **opts))
    _compare_all(got, want, dtype, ["p", "g", "v"])


@pytest.mark.parametrize("n", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
def test_adagrad_step_matches_reference(gpu, ref, dtype, n, opts):
    rng = numpy.random.default_rng(23)
    arrays = [randn(rng, n, dtype), randn(rng, n, dtype), _state(rng, n, dtype, positive=True)]
    got, want = _run_both(gpu, ref, arrays, lambda ops, p, g, h: ops.adagrad_step(p, g, h, 0.01, 1e-7, **opts))
    _compare_all(got, want, dtype, ["p", "g", "h"])


@pytest.mark.parametrize("n", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
def test_rmsprop_step_matches_reference(gpu, ref, dtype, n, opts):
    rng = numpy.random.default_rng(24)
    arrays = [randn(rng, n, dtype), randn(rng, n, dtype), _state(rng, n, dtype, positive=True)]
    got, want = _run_both(gpu, ref, arrays, lambda ops, p, g, h: ops.rmsprop_step(p, g, h, 0.01, 0.99, 1e-7, **opts))
    _compare_all(got, want, dtype, ["p", "g", "h"])


@pytest.mark.parametrize("n", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
@pytest.mark.parametrize("t", [1, 10])
def test_adam_step_matches_reference(gpu, ref, dtype, n, opts, decoupled, t):
    rng = numpy.random.default_rng(25)
    arrays = [randn(rng, n, dtype), randn(rng, n, dtype), _state(rng, n, dtype),
              _state(rng, n, dtype, positive=True)]
    got, want = _run_both(gpu, ref, arrays, lambda ops, p, g, m, v: ops.adam_step(
        p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, t, decoupled=decoupled, **opts))
    _compare_all(got, want, dtype, ["p", "g", "m", "v"])


@pytest.mark.parametrize("n", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
@pytest.mark.parametrize("t", [1, 10])
def test_amsgrad_step_matches_reference(gpu, ref, dtype, n, opts, decoupled, t):
    rng = numpy.random.default_rng(31)
    arrays = [randn(rng, n, dtype), randn(rng, n, dtype, 0.3), _state(rng, n, dtype),
              _state(rng, n, dtype, positive=True), _state(rng, n, dtype, positive=True)]
    # half the v_hat entries above the new v (the max keeps them), half below
    arrays[4][::2] *= dtype.type(10)
    got, want = _run_both(gpu, ref, arrays, lambda ops, p, g, m, v, vh: ops.amsgrad_step(
        p, g, m, v, vh, 1e-3, 0.9, 0.999, 1e-8, t, decoupled=decoupled, **opts))
    _compare_all(got, want, dtype, ["p", "g", "m", "v", "v_hat"])


@pytest.mark.parametrize("n", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("t", [1, 10])
def test_nadam_step_matches_reference(gpu, ref, dtype, n, opts, t):
    rng = numpy.random.default_rng(32)
    arrays = [randn(rng, n, dtype), randn(rng, n, dtype), _state(rng, n, dtype), _state(rng, n, dtype, positive=True)]
    mu_product = float(numpy.prod([0.9 * (1 - 0.5 * 0.96 ** i) for i in range(1, t + 1)]))
    got, want = _run_both(gpu, ref, arrays, lambda ops, p, g, m, v: ops.nadam_step(
        p, g, m, v, 1e-3, 0.9, 0.999, 1e-7, t, mu_product, **opts))
    _compare_all(got, want, dtype, ["p", "g", "m", "v"])


@pytest.mark.parametrize("n", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("t", [1, 10])
def test_adamax_step_matches_reference(gpu, ref, dtype, n, opts, t):
    rng = numpy.random.default_rng(33)
    arrays = [randn(rng, n, dtype), randn(rng, n, dtype), _state(rng, n, dtype), _state(rng, n, dtype, positive=True)]
    got, want = _run_both(gpu, ref, arrays, lambda ops, p, g, m, u: ops.adamax_step(
        p, g, m, u, 2e-3, 0.9, 0.999, 1e-7, t, **opts))
    _compare_all(got, want, dtype, ["p", "g", "m", "u"])


def test_optimizer_state_below_smallest_normal_is_flushed(gpu, ref, dtype):
    """A zero gradient lets state decay into the subnormal range: both backends flush it to 0."""
    n = 1000
    tiny = numpy.finfo(dtype).tiny
    p, g = numpy.ones(n, dtype), numpy.zeros(n, dtype)
    state = numpy.full(n, tiny * dtype.type(1.01), dtype)  # decays below tiny in one step
    cases = [  # (call, arrays, how many state arrays decay; AMSGrad's v_hat is a maximum: it keeps 1.01 tiny)
        (lambda ops, p, g, v: ops.momentum_step(p, g, v, 0.1, 0.9), [p, g, state], 1),
        (lambda ops, p, g, h: ops.rmsprop_step(p, g, h, 0.01, 0.9, 1e-7), [p, g, state], 1),
        (lambda ops, p, g, m, v: ops.adam_step(p, g, m, v, 1e-3, 0.9, 0.9, 1e-8, 1), [p, g, state, state], 2),
        (lambda ops, p, g, m, v, vh: ops.amsgrad_step(p, g, m, v, vh, 1e-3, 0.9, 0.9, 1e-8, 1),
         [p, g, state, state, state], 2),
        (lambda ops, p, g, m, v: ops.nadam_step(p, g, m, v, 1e-3, 0.9, 0.9, 1e-8, 1, 0.9 * 0.52), [p, g, state, state],
         2),
        (lambda ops, p, g, m, u: ops.adamax_step(p, g, m, u, 1e-3, 0.9, 0.9, 1e-8, 1), [p, g, state, state], 2),
    ]
    for call, arrays, decaying in cases:
        got, want = _run_both(gpu, ref, arrays, call)
        for a in want[2:2 + decaying]:
            assert (a == 0).all()
        for a in got[2:2 + decaying]:
            numpy.testing.assert_array_equal(host(a), numpy.zeros(n, dtype))
        for a in got[2 + decaying:]:
            numpy.testing.assert_array_equal(host(a), state)
        _compare_all(got, want, dtype, ["p", "g", "state", "state2", "state3"])


# ---------------------------------------------------------------------------- graph-capture (dev) variants
# ``step_dev(rule, ...)`` reads the scalars that ``<rule>_step`` takes by value from a float64 device
# array (``step_scalars(rule, ...)``), and ``dropout_mask_dev`` reads the stream start from a uint64 device
# array: the results must be bitwise equal to the by-value kernels' for the same inputs.
DEV_SIZES = [1, 7, 1003, 128 * 128 * 2 * 17 + 3]  # 1003 and big: several blocks, odd; big wraps the grid
DEV_SIZE_IDS = ["1", "7", "1003", "big"]
DEV_RULES = [  # (id, rule, state arrays (True: positive), hyperparameters)
    ("sgd", "sgd", [], dict(lr=0.1)),
    ("momentum", "momentum", [False], dict(lr=0.1, momentum=0.9, nesterov=False)),
    ("nesterov", "momentum", [False], dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("adagrad", "adagrad", [True], dict(lr=0.01, eps=1e-7)),
    ("rmsprop", "rmsprop", [True], dict(lr=0.01, rho=0.99, eps=1e-7)),
    ("adam-t1", "adam", [False, True], dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=1)),
    ("adam-t7", "adam", [False, True], dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=7)),
    ("adamw-t1", "adam", [False, True], dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=1, decoupled=True)),
    ("adamw-t7", "adam", [False, True], dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=7, decoupled=True)),
    ("amsgrad-t1", "amsgrad", [False, True, True], dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=1)),
    ("amsgradw-t7", "amsgrad", [False, True, True], dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, t=7,
                                                         decoupled=True)),
    ("nadam-t1", "nadam", [False, True], dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7, t=1, mu_product=0.9 * 0.52)),
    ("nadam-t7", "nadam", [False, True], dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7, t=7, mu_product=0.27)),
    ("adamax-t1", "adamax", [False, True], dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-7, t=1)),
    ("adamax-t7", "adamax", [False, True], dict(lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-7, t=7)),
]
DEV_RULE_IDS = [r[0] for r in DEV_RULES]
SCALAR_COUNTS = {"sgd": 7, "momentum": 9, "adagrad": 8, "rmsprop": 10, "adam": 15, "amsgrad": 15, "nadam": 14,
                 "adamax": 11}


def _step_args(rule, nslots, **given):
    """``<rule>_step``'s arguments after ``p, g`` and its ``nslots`` slots, complete and in order
    (defaults filled in), as ``step_scalars``/``step_dev`` take them."""
    import inspect

    from fastnn.backend.ops import Ops

    params = list(inspect.signature(getattr(Ops, rule + "_step")).parameters.values())[3 + nslots:]
    return tuple(given.pop(q.name) if q.name in given else q.default for q in params)


def _bits(a):
    """The raw bits of a float array (bitwise comparison: -0.0 != 0.0, NaN payloads count)."""
    a = numpy.ascontiguousarray(host(a))
    return a.view({4: numpy.uint32, 8: numpy.uint64}[a.dtype.itemsize])


def _assert_bitwise(got, want, names):
    for name, a, b in zip(names, got, want):
        assert host(a).dtype == host(b).dtype, name
        numpy.testing.assert_array_equal(_bits(a), _bits(b), err_msg=f"array {name} differs bitwise")


def _dev_arrays(rng, n, dtype, state):
    return [randn(rng, n, dtype), randn(rng, n, dtype)] + [_state(rng, n, dtype, positive=pos) for pos in state]


def _offset_view(cupy, s, offset=3):
    """``s`` copied into a bigger float64 buffer (NaN around it) and returned as a view at ``offset``."""
    buf = cupy.full(len(s) + offset + 4, numpy.nan, dtype=numpy.float64)
    buf[offset:offset + len(s)] = cupy.asarray(s)
    view = buf[offset:offset + len(s)]
    assert view.flags.c_contiguous and view.data.ptr != buf.data.ptr
    return view


@pytest.mark.parametrize("n", DEV_SIZES, ids=DEV_SIZE_IDS)
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("case", DEV_RULES, ids=DEV_RULE_IDS)
def test_optimizer_step_dev_bitwise_equal_to_by_value(gpu, dtype, n, opts, case):
    _, rule, state, hyper = case
    cupy = gpu.xp
    arrays = _dev_arrays(numpy.random.default_rng(26), n, dtype, state)
    names = ["p", "g"] + [f"state{i}" for i in range(len(state))]
    want = [gpu.asarray(a.copy()) for a in arrays]
    getattr(gpu, f"{rule}_step")(*want, **hyper, **opts)
    s_host = gpu.step_scalars(rule, dtype, *_step_args(rule, len(state), **hyper, **opts))
    assert isinstance(s_host, numpy.ndarray) and s_host.dtype == numpy.float64
    assert s_host.shape == (SCALAR_COUNTS[rule],)
    for s in (cupy.asarray(s_host), _offset_view(cupy, s_host)):
        got = [gpu.asarray(a.copy()) for a in arrays]
        assert gpu.step_dev(rule, got[0], got[1], got[2:], s) is None
        _assert_bitwise(got, want, names)
        numpy.testing.assert_array_equal(host(s), s_host)  # s is only read


@pytest.mark.parametrize("rule", ["momentum", "adam", "amsgrad", "nadam", "adamax"])
def test_optimizer_step_dev_rereads_rewritten_scalars(gpu, dtype, rule):
    """As in a graph replay: one fixed device buffer, rewritten before each step (changing lr, t and
    whether the gradient is clipped)."""
    cupy = gpu.xp
    n = 5003
    state = {"momentum": [False], "amsgrad": [False, True, True]}.get(rule, [False, True])
    arrays = _dev_arrays(numpy.random.default_rng(27), n, dtype, state)
    want = [gpu.asarray(a.copy()) for a in arrays]
    got = [gpu.asarray(a.copy()) for a in arrays]
    buf = cupy.zeros(2 + SCALAR_COUNTS[rule], dtype=numpy.float64)
    s = buf[2:]
    for t in range(1, 6):
        lr, clip = 0.05 / t, (0.5 if t % 2 else float("inf"))
        # the primitive's arguments after its slots, in its order
        args = {"momentum": (lr, 0.9, 0.001 * t, 1.0, t % 2 == 0, clip),
                "adam": (lr, 0.9, 0.999, 1e-8, t, 0.01, 1.0, t > 2, clip),
                "amsgrad": (lr, 0.9, 0.999, 1e-8, t, 0.01, 1.0, t > 2, clip),
                "nadam": (lr, 0.9, 0.999, 1e-7, t, 0.5 ** t, 0.01 * (t > 2), 1.0, clip),
                "adamax": (lr, 0.9, 0.999, 1e-7, t, 0.01 * (t > 2), 1.0, clip)}[rule]
        getattr(gpu, f"{rule}_step")(*want, *args)
        s[...] = cupy.asarray(gpu.step_scalars(rule, dtype, *args))
        gpu.step_dev(rule, got[0], got[1], got[2:], s)
        _assert_bitwise(got, want, ["p", "g", "state0", "state1", "state2"])


def test_optimizer_step_dev_matches_reference(gpu, ref, dtype):
    """The dev kernels are also the reference's update (within the by-value kernels' tolerance)."""
    rng = numpy.random.default_rng(28)
    n = 1003
    p, g, m, v = _dev_arrays(rng, n, dtype, [False, True])
    args = (1e-3, 0.9, 0.999, 1e-8, 3, 0.01, 1.0, True, 0.5)  # lr, b1, b2, eps, t, wd, scale, decoupled, clip
    want = [a.copy() for a in (p, g, m, v)]
    ref.adam_step(*want, *args)
    got = [gpu.asarray(a.copy()) for a in (p, g, m, v)]
    gpu.step_dev("adam", got[0], got[1], got[2:], gpu.asarray(gpu.step_scalars("adam", dtype, *args)))
    _compare_all(got, want, dtype, ["p", "g", "m", "v"])


def test_optimizer_step_dev_checks_scalars(gpu, dtype):
    cupy = gpu.xp
    inf = float("inf")
    p, g, h = (gpu.asarray(numpy.ones(8, dtype)) for _ in range(3))
    s = cupy.asarray(gpu.step_scalars("adagrad", dtype, 0.01, 1e-7, 0.0, 1.0, inf))
    with pytest.raises(ValueError, match=r"adagrad_step_dev: s must hold the 8 scalars.*got length 7"):
        gpu.step_dev("adagrad", p, g, (h,), s[:7])
    with pytest.raises(ValueError, match=r"adagrad_step_dev: s must hold the 8 scalars.*got length 9"):
        gpu.step_dev("adagrad", p, g, (h,), cupy.zeros(9, numpy.float64))
    with pytest.raises(TypeError, match=r"adagrad_step_dev: s must have dtype float64.*float32"):
        gpu.step_dev("adagrad", p, g, (h,), s.astype(numpy.float32))
    with pytest.raises(ValueError, match=r"adagrad_step_dev: s must be C-contiguous"):
        gpu.step_dev("adagrad", p, g, (h,), cupy.zeros(16, numpy.float64)[::2])
    with pytest.raises(ValueError, match=r"adagrad_step_dev: s must be 1-D"):
        gpu.step_dev("adagrad", p, g, (h,), cupy.zeros((2, 4), numpy.float64))
    with pytest.raises(TypeError, match=r"adagrad_step_dev: s must be a device \(CuPy\) array"):
        gpu.step_dev("adagrad", p, g, (h,), gpu.step_scalars("adagrad", dtype, 0.01, 1e-7, 0.0, 1.0, inf))
    with pytest.raises(ValueError, match=r"sgd_step_dev: s must hold the 7 scalars"):
        gpu.step_dev("sgd", p, g, (), cupy.asarray(gpu.step_scalars("momentum", dtype, 0.1, 0.9, 0.0, 1.0, False, inf)))
    with pytest.raises(ValueError, match=r"adam_step_dev: m must have shape \(8,\)"):
        gpu.step_dev("adam", p, g, (gpu.asarray(numpy.ones(7, dtype)), h),
                     cupy.asarray(gpu.step_scalars("adam", dtype, 1e-3, 0.9, 0.999, 1e-8, 1, 0.0, 1.0, False, inf)))
    with pytest.raises(ValueError, match=r"amsgrad_step_dev: v_hat must have shape \(8,\)"):
        gpu.step_dev("amsgrad", p, g, (h, h, gpu.asarray(numpy.ones(7, dtype))),
                     cupy.asarray(gpu.step_scalars("amsgrad", dtype, 1e-3, 0.9, 0.999, 1e-8, 1, 0.0, 1.0, False, inf)))
    for rule, args in (("adam", (1e-3, 0.9, 0.999, 1e-8, 0, 0.0, 1.0, False, inf)),
                       ("nadam", (1e-3, 0.9, 0.999, 1e-7, 0, 1.0, 0.0, 1.0, inf)),
                       ("adamax", (1e-3, 0.9, 0.999, 1e-7, 0, 0.0, 1.0, inf))):
        with pytest.raises(ValueError, match=rf"{rule}_scalars: the step number t counts from 1"):
            gpu.step_scalars(rule, dtype, *args)


DEV_MASK_SHAPES = [(1, 1), (7, 13), (257, 33), BIG]
DEV_MASK_IDS = ["1x1", "7x13", "257x33", "big"]


@pytest.mark.parametrize("shape", DEV_MASK_SHAPES, ids=DEV_MASK_IDS)
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.9])
def test_dropout_mask_dev_bitwise_equal_to_by_value(gpu, dtype, shape, rate):
    from fastnn.kernels import dropout_base

    cupy = gpu.xp
    for seed, step in [(0, 0), (12345, 7), (2**40 + 3, 123456), (2**63 + 5, 2**33 + 1)]:
        for row0 in (0, 5):
            want = gpu.dropout_mask(shape, rate, seed, step, row0, dtype=dtype)
            base = cupy.asarray([dropout_base(seed, step)], dtype=cupy.uint64)
            words = cupy.zeros(4, dtype=cupy.uint64)
            words[2] = base[0]
            for b in (base, words[2:3]):  # a one-element array, and a view at a non-zero offset
                out = gpu.alloc(shape, dtype)
                assert gpu.dropout_mask_dev(shape, rate, b, row0, dtype=dtype, out=out) is out
                _assert_bitwise([out], [want], ["mask"])


def test_dropout_mask_dev_rereads_rewritten_base(gpu, dtype):
    """As in a graph replay: one fixed base word and mask buffer, the base rewritten for each step."""
    from fastnn.kernels import dropout_base

    cupy = gpu.xp
    shape, words = (129, 31), cupy.zeros(3, dtype=cupy.uint64)
    out = gpu.alloc(shape, dtype)
    for step in range(4):
        words[1:2] = cupy.asarray([dropout_base(99, step)], dtype=cupy.uint64)
        gpu.dropout_mask_dev(shape, 0.4, words[1:2], 2, dtype=dtype, out=out)
        _assert_bitwise([out], [gpu.dropout_mask(shape, 0.4, 99, step, 2, dtype=dtype)], [f"mask of step {step}"])


def test_dropout_mask_dev_checks_its_arguments(gpu, dtype):
    from fastnn.kernels import dropout_base

    cupy = gpu.xp
    base = cupy.asarray([dropout_base(1, 2)], dtype=cupy.uint64)
    out = gpu.alloc((4, 3), dtype)
    with pytest.raises(ValueError, match=r"dropout_mask_dev: out is required"):
        gpu.dropout_mask_dev((4, 3), 0.5, base, dtype=dtype)
    with pytest.raises(ValueError, match=r"dropout_mask_dev: out must have shape \(4, 3\)"):
        gpu.dropout_mask_dev((4, 3), 0.5, base, dtype=dtype, out=gpu.alloc((3, 4), dtype))
    with pytest.raises(ValueError, match=r"dropout_mask_dev: rate must be in \[0, 1\)"):
        gpu.dropout_mask_dev((4, 3), 1.0, base, dtype=dtype, out=out)
    with pytest.raises(ValueError, match=r"dropout_mask_dev: shape and row0 must be non-negative"):
        gpu.dropout_mask_dev((4, 3), 0.5, base, -1, dtype=dtype, out=out)
    with pytest.raises(TypeError, match=r"dropout_mask_dev: base must have dtype uint64"):
        gpu.dropout_mask_dev((4, 3), 0.5, base.astype(cupy.int64), dtype=dtype, out=out)
    with pytest.raises(ValueError, match=r"dropout_mask_dev: base must hold exactly one element"):
        gpu.dropout_mask_dev((4, 3), 0.5, cupy.zeros(2, cupy.uint64), dtype=dtype, out=out)
    with pytest.raises(TypeError, match=r"dropout_mask_dev: base must be a device \(CuPy\) array"):
        gpu.dropout_mask_dev((4, 3), 0.5, numpy.zeros(1, numpy.uint64), dtype=dtype, out=out)
