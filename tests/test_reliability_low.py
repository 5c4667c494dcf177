"""Issue 16, the "Low" class: bad values refused with a message naming the class or function, the
argument and the offending value, dtype or shape; never a bare NumPy, gzip or zlib error and
never a silent coercion.

1. book layers and functions (``fastnn.book.layers``, ``fastnn.book.functions``, ``fastnn.functions``):
   object, complex and string arrays; empty batches (a layer passes 0 rows through, a loss refuses N=0);
2. the book's networks (``fastnn.book`` and ``fastnn.networks``): sizes, ``weight_init_std``,
   ``weight_decay_lambda`` checked at construction;
3. ``load_mnist`` / ``read_idx`` on corrupt, truncated or mislabelled files;
4. ``numerical_gradient``, ``gradient_descent``, ``fastnn.gradcheck`` and ``fastnn.utils``.
"""
import gzip
import os
import re
import struct
import threading

import numpy
import pytest

from fastnn import datasets, gradcheck, utils
from fastnn import functions as F
from fastnn import networks as N
from fastnn.book import ch04
from fastnn.book import functions as BF
from fastnn.book import gradient as BG
from fastnn.book import layers as L
from fastnn.book import util as BU
from fastnn.book.deep_convnet import DeepConvNet
from fastnn.book.multi_layer_net import MultiLayerNet
from fastnn.book.multi_layer_net_extend import MultiLayerNetExtend
from fastnn.book.simple_convnet import SimpleConvNet
from fastnn.book.two_layer_net import TwoLayerNet
from fastnn.testing import host

RNG = numpy.random.default_rng(16)

BAD_ARRAYS = {  # dtype kind -> an array of that kind, shape (2, 4)
    "complex": lambda: numpy.full((2, 4), 1 + 2j),
    "object": lambda: numpy.ones((2, 4), dtype=object),
    "string": lambda: numpy.full((2, 4), "a"),
}
BAD_DTYPE = {"complex": "complex128", "object": "object", "string": "<U1"}


# ================================================================ 1. book layers and functions
def _affine(ops):
    return L.Affine(ops.asarray(RNG.standard_normal((4, 3))), ops.asarray(numpy.zeros(3)), name="Affine1")


def _bn(ops):
    return L.BatchNormalization(ops.asarray(numpy.ones(4)), ops.asarray(numpy.zeros(4)), name="BatchNorm1")


LAYERS_2D = {  # name -> (make(ops), class name and layer name as the message shows them)
    "Relu": (lambda ops: L.Relu(name="relu_a"), "Relu 'relu_a'"),
    "Sigmoid": (lambda ops: L.Sigmoid(name="sig_a"), "Sigmoid 'sig_a'"),
    "Affine": (_affine, "Affine 'Affine1'"),
    "Dropout": (lambda ops: L.Dropout(0.5, seed=1, name="drop_a"), "Dropout 'drop_a'"),
    "BatchNormalization": (_bn, "BatchNormalization 'BatchNorm1'"),
}


def _conv(ops):
    return L.Convolution(ops.asarray(RNG.standard_normal((2, 1, 3, 3))), 0.0, name="Conv1")


LAYERS_4D = {
    "Convolution": (_conv, "Convolution 'Conv1'"),
    "Pooling": (lambda ops: L.Pooling(2, 2, name="Pool1"), "Pooling 'Pool1'"),
}


@pytest.mark.parametrize("kind", list(BAD_ARRAYS))
@pytest.mark.parametrize("layer", list(LAYERS_2D) + list(LAYERS_4D))
def test_book_layer_forward_refuses_non_real_input(ops, layer, kind):
    make, owner = {**LAYERS_2D, **LAYERS_4D}[layer]
    x = BAD_ARRAYS[kind]()
    if layer in LAYERS_4D:
        x = x.reshape(1, 1, 2, 4).repeat(2, axis=2)
    dtype = BAD_DTYPE[kind]
    with pytest.raises(TypeError, match=re.escape(f"{owner}.forward: x must hold real numbers") + r".*"
                       + re.escape(f"got dtype {dtype} of shape {x.shape}")):
        make(ops).forward(x)


@pytest.mark.parametrize("kind", list(BAD_ARRAYS))
@pytest.mark.parametrize("layer", ["Relu", "Sigmoid", "Affine", "Dropout", "BatchNormalization"])
def test_book_layer_backward_refuses_non_real_dout(ops, layer, kind):
    make, owner = LAYERS_2D[layer]
    lay = make(ops)
    y = lay.forward(ops.asarray(RNG.standard_normal((2, 4))))
    dout = BAD_ARRAYS[kind]()[:, :y.shape[1]]
    with pytest.raises(TypeError, match=re.escape(f"{owner}.backward: dout must hold real numbers")):
        lay.backward(dout)


@pytest.mark.parametrize("kind", list(BAD_ARRAYS))
def test_book_conv_and_pooling_backward_refuse_non_real_dout(ops, kind):
    for name in LAYERS_4D:
        make, owner = LAYERS_4D[name]
        lay = make(ops)
        y = lay.forward(ops.asarray(RNG.standard_normal((2, 1, 4, 4))))
        bad = BAD_ARRAYS[kind]()
        dout = numpy.full(tuple(y.shape), bad.ravel()[0], dtype=bad.dtype)
        with pytest.raises(TypeError, match=re.escape(f"{owner}.backward: dout must hold real numbers")):
            lay.backward(dout)


@pytest.mark.parametrize("kind", list(BAD_ARRAYS))
def test_book_softmax_with_loss_refuses_non_real_scores_and_targets(ops, kind):
    for exact in (False, True):
        with pytest.raises(TypeError, match=re.escape("SoftmaxWithLoss.forward: x must hold real numbers")
                           + r".*" + re.escape(f"dtype {BAD_DTYPE[kind]} of shape (2, 4)")):
            L.SoftmaxWithLoss(exact=exact).forward(BAD_ARRAYS[kind](), numpy.array([0, 1]))
        scores = ops.asarray(RNG.standard_normal((2, 4)))
        with pytest.raises(TypeError, match=re.escape("SoftmaxWithLoss.forward: t must hold real numbers")
                           + r".*" + re.escape(f"dtype {BAD_DTYPE[kind]} of shape (2, 4)")):
            L.SoftmaxWithLoss(exact=exact).forward(scores, BAD_ARRAYS[kind]())
    loss = L.SoftmaxWithLoss()
    loss.forward(ops.asarray(RNG.standard_normal((2, 4))), numpy.array([0, 1]))
    with pytest.raises(TypeError, match=r"SoftmaxWithLoss.backward: dout must be a real number.*\(1\+2j\)"):
        loss.backward(1 + 2j)


def test_book_layers_keep_accepting_ints_bools_lists_and_float32(ops):
    assert host(L.Relu().forward(numpy.array([[-2, 3]]))).tolist() == [[0.0, 3.0]]
    assert host(L.Sigmoid().forward(numpy.array([[True, False]]))).shape == (1, 2)
    assert host(_affine(ops).forward([[1.0, 2.0, 3.0, 4.0]])).shape == (1, 3)  # a nested list of numbers
    x32 = ops.asarray(RNG.standard_normal((3, 4)).astype(numpy.float32))
    assert L.Relu().forward(x32).dtype == numpy.float32


# The numba kernels leave empty arrays to the NumPy reference (a fallback on purpose, hence the marks)
@pytest.mark.allow_fallback
@pytest.mark.parametrize("layer", list(LAYERS_2D))
def test_book_layer_forward_and_backward_pass_an_empty_batch_through(ops, layer):
    make, _ = LAYERS_2D[layer]
    lay = make(ops)
    train = layer != "BatchNormalization"  # batch statistics of no samples: refused (next test)
    y = lay.forward(ops.asarray(numpy.zeros((0, 4))), train)
    out_units = 3 if layer == "Affine" else 4
    assert tuple(y.shape) == (0, out_units)
    if train:
        dx = lay.backward(ops.asarray(numpy.zeros((0, out_units))))
        assert tuple(dx.shape) == (0, 4)


@pytest.mark.allow_fallback
def test_book_affine_empty_4d_batch_keeps_its_shape(ops):
    lay = L.Affine(ops.asarray(RNG.standard_normal((8, 3))), ops.asarray(numpy.zeros(3)))
    y = lay.forward(ops.asarray(numpy.zeros((0, 2, 2, 2))))
    assert tuple(y.shape) == (0, 3)
    assert tuple(lay.backward(ops.asarray(numpy.zeros((0, 3)))).shape) == (0, 2, 2, 2)
    assert float(host(lay.dW).sum()) == 0.0 and float(host(lay.db).sum()) == 0.0


@pytest.mark.allow_fallback
def test_book_conv_and_pooling_pass_an_empty_batch_through(ops):
    for name, (make, _) in LAYERS_4D.items():
        lay = make(ops)
        y = lay.forward(ops.asarray(numpy.zeros((0, 1, 4, 4))))
        assert y.shape[0] == 0, name
        assert tuple(lay.backward(ops.asarray(numpy.zeros(y.shape))).shape) == (0, 1, 4, 4), name


def test_book_batchnorm_refuses_a_training_step_on_an_empty_batch(ops):
    bn = _bn(ops)
    with pytest.raises(ValueError, match=re.escape("BatchNormalization 'BatchNorm1'.forward: a training-mode "
                                                   "batch needs at least one sample, got x of shape (0, 4) (N=0)")):
        bn.forward(ops.asarray(numpy.zeros((0, 4))), True)
    for stat in (bn.running_mean, bn.running_var):  # refused before any state changed
        assert stat is None or numpy.isfinite(host(stat)).all()


@pytest.mark.parametrize("exact", [False, True])
def test_book_softmax_with_loss_refuses_an_empty_batch(ops, exact):
    with pytest.raises(ValueError, match=re.escape("SoftmaxWithLoss.forward: x has no rows (N=0, shape (0, 4))")):
        L.SoftmaxWithLoss(exact=exact).forward(ops.asarray(numpy.zeros((0, 4))), numpy.zeros(0, numpy.int64))


FUNCTIONS = {  # name -> call with one array argument
    "fastnn.functions.sigmoid": (F.sigmoid, "sigmoid"),
    "fastnn.functions.relu": (F.relu, "relu"),
    "fastnn.functions.tanh": (F.tanh, "tanh"),
    "fastnn.functions.leaky_relu": (F.leaky_relu, "leaky_relu"),
    "fastnn.functions.elu": (F.elu, "elu"),
    "fastnn.functions.softplus": (F.softplus, "softplus"),
    "fastnn.functions.softmax": (F.softmax, "softmax"),
    "fastnn.functions.step_function": (F.step_function, "step_function"),
    "book.step_function": (BF.step_function, "step_function"),
    "book.sigmoid_grad": (BF.sigmoid_grad, "sigmoid_grad"),
    "book.relu": (BF.relu, "relu"),
    "book.relu_grad": (BF.relu_grad, "relu_grad"),
    "book.softmax_3d": (lambda x: BF.softmax(x.reshape(1, 2, 4)), "softmax"),
    "book.im2col": (lambda x: BU.im2col(x.reshape(1, 1, 2, 4), 2, 2), "im2col"),
    "book.col2im": (lambda x: BU.col2im(x.reshape(2, 4), (1, 1, 3, 3), 2, 2), "col2im"),
}


@pytest.mark.parametrize("kind", list(BAD_ARRAYS))
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_functions_refuse_non_real_input(name, kind):
    fn, shown = FUNCTIONS[name]
    arg = "col" if shown == "col2im" else ("input_data" if shown == "im2col" else "x")
    with pytest.raises(TypeError, match=re.escape(f"{shown}: {arg} must hold real numbers") + r".*"
                       + re.escape(f"got dtype {BAD_DTYPE[kind]}")):
        fn(BAD_ARRAYS[kind]())


@pytest.mark.parametrize("kind", list(BAD_ARRAYS))
def test_losses_refuse_non_real_predictions_and_targets(kind):
    y, t = numpy.full((2, 4), 0.25), numpy.array([0, 1])
    bad = BAD_ARRAYS[kind]()
    with pytest.raises(TypeError, match=re.escape("cross_entropy_error: y must hold real numbers")):
        F.cross_entropy_error(bad, t)
    with pytest.raises(TypeError, match=re.escape("softmax_loss: X must hold real numbers")):
        BF.softmax_loss(bad, t)
    with pytest.raises(TypeError, match=re.escape("cross_entropy_error: t must hold real numbers")
                       + r".*" + re.escape(f"dtype {BAD_DTYPE[kind]} of shape (2,)")):
        F.cross_entropy_error(y, bad[:, 0])
    for yy, tt, arg in ((bad, y, "y"), (y, bad, "t")):
        with pytest.raises(TypeError, match=re.escape(f"mean_squared_error: {arg} must hold real numbers")):
            F.mean_squared_error(yy, tt)
        with pytest.raises(TypeError, match=re.escape(f"sum_squared_error: {arg} must hold real numbers")):
            BF.sum_squared_error(yy, tt)


def test_losses_refuse_an_empty_batch():
    with pytest.raises(ValueError, match=re.escape("cross_entropy_error: y has no rows (N=0, shape (0, 3))")):
        F.cross_entropy_error(numpy.zeros((0, 3)), numpy.zeros(0, numpy.int64))
    with pytest.raises(ValueError, match=re.escape("cross_entropy_error: y has no rows (N=0, shape (0, 3))")):
        BF.softmax_loss(numpy.zeros((0, 3)), numpy.zeros(0, numpy.int64))
    with pytest.raises(ValueError, match=re.escape("cross_entropy_error: y has no classes (shape (0,))")):
        F.cross_entropy_error(numpy.zeros(0), numpy.zeros(0))
    with pytest.raises(ValueError, match=re.escape("mean_squared_error: y and t are empty (shape (0, 3))")):
        F.mean_squared_error(numpy.zeros((0, 3)), numpy.zeros((0, 3)))


def test_activation_parameters_are_real_numbers():
    x = numpy.array([-1.0, 2.0])
    for fn, arg in ((F.leaky_relu, "alpha"), (F.elu, "alpha")):
        for bad in ("0.1", 1j, None, float("nan")):
            with pytest.raises(ValueError, match=re.escape(f"{fn.__name__}: {arg} must be a finite real number, "
                                                           f"got {bad!r}")):
                fn(x, bad)


def test_functions_keep_accepting_ints_bools_lists_and_empty_activations():
    assert F.sigmoid([0, 0]).tolist() == [0.5, 0.5]
    assert F.relu(numpy.array([True, False])).dtype == numpy.float64
    assert BF.relu(numpy.array([-2, 3])).tolist() == [0, 3]
    assert F.softmax(numpy.zeros((0, 3))).shape == (0, 3)
    assert BF.identity_function("anything") == "anything"  # the identity is the identity


# ================================================================ 2. book networks
SIZE_ARGS = {  # class label -> (constructor from keyword overrides, [size argument names])
    "ch04.TwoLayerNet": (lambda **kw: ch04.TwoLayerNet(**{"input_size": 4, "hidden_size": 5, "output_size": 3, **kw}),
                         ["input_size", "hidden_size", "output_size"]),
    "ch05.TwoLayerNet": (lambda **kw: TwoLayerNet(**{"input_size": 4, "hidden_size": 5, "output_size": 3, **kw}),
                         ["input_size", "hidden_size", "output_size"]),
    "book.MultiLayerNet": (lambda **kw: MultiLayerNet(**{"input_size": 4, "hidden_size_list": [5], "output_size": 3,
                                                         **kw}), ["input_size", "output_size"]),
    "book.MultiLayerNetExtend": (lambda **kw: MultiLayerNetExtend(**{"input_size": 4, "hidden_size_list": [5],
                                                                     "output_size": 3, **kw}),
                                 ["input_size", "output_size"]),
    "networks.TwoLayerNet": (lambda **kw: N.TwoLayerNet(**{"input_size": 4, "hidden_size": 5, "output_size": 3, **kw}),
                             ["input_size", "hidden_size", "output_size"]),
    "networks.MultiLayerNet": (lambda **kw: N.MultiLayerNet(**{"input_size": 4, "hidden_size_list": [5],
                                                               "output_size": 3, **kw}), ["input_size", "output_size"]),
    "networks.MultiLayerNetExtend": (lambda **kw: N.MultiLayerNetExtend(**{"input_size": 4, "hidden_size_list": [5],
                                                                           "output_size": 3, **kw}),
                                     ["input_size", "output_size"]),
    "SimpleConvNet": (lambda **kw: SimpleConvNet(**{"input_dim": (1, 8, 8), "hidden_size": 5, "output_size": 3,
                                                    "conv_param": {"filter_num": 2, "filter_size": 3, "pad": 0,
                                                                   "stride": 1}, **kw}),
                      ["hidden_size", "output_size"]),
    "DeepConvNet": (lambda **kw: DeepConvNet(**kw), ["hidden_size", "output_size"]),
}
BAD_SIZES = [0, -1, 2.5, True, "100", None, float("nan"), numpy.float64(3.0)]


def _cls(label):
    return label.split(".")[-1]


@pytest.mark.parametrize("bad", BAD_SIZES, ids=repr)
@pytest.mark.parametrize("label", list(SIZE_ARGS))
def test_book_networks_refuse_bad_sizes(label, bad):
    make, args = SIZE_ARGS[label]
    for arg in args:
        with pytest.raises(ValueError, match=re.escape(f"{_cls(label)}: {arg} must be a positive integer, "
                                                       f"got {bad!r}")):
            make(**{arg: bad})


@pytest.mark.parametrize("bad", BAD_SIZES, ids=repr)
@pytest.mark.parametrize("label", ["book.MultiLayerNet", "book.MultiLayerNetExtend", "networks.MultiLayerNet",
                                   "networks.MultiLayerNetExtend"])
def test_book_networks_refuse_bad_hidden_sizes(label, bad):
    make, _ = SIZE_ARGS[label]
    with pytest.raises(ValueError, match=re.escape(f"{_cls(label)}: hidden_size_list[1] must be a positive "
                                                   f"integer, got {bad!r}")):
        make(hidden_size_list=[5, bad])


@pytest.mark.parametrize("label", ["book.MultiLayerNet", "book.MultiLayerNetExtend", "networks.MultiLayerNet",
                                   "networks.MultiLayerNetExtend"])
def test_book_networks_refuse_a_hidden_size_list_that_is_not_a_list(label):
    make, _ = SIZE_ARGS[label]
    for bad in (100, "100", None):
        with pytest.raises(ValueError, match=re.escape(f"{_cls(label)}: hidden_size_list must be a list of "
                                                       f"positive integers (e.g. [100, 100]), got {bad!r}")):
            make(hidden_size_list=bad)


def test_conv_nets_refuse_bad_conv_params_and_input_dims():
    make, _ = SIZE_ARGS["SimpleConvNet"]
    good = {"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1}
    for key, bad in (("filter_num", 0), ("filter_size", 2.5), ("stride", 0), ("stride", True)):
        with pytest.raises(ValueError, match=re.escape(f"SimpleConvNet: conv_param['{key}'] must be a positive "
                                                       f"integer, got {bad!r}")):
            make(conv_param={**good, key: bad})
    with pytest.raises(ValueError, match=re.escape("SimpleConvNet: conv_param['pad'] must be an integer >= 0, "
                                                   "got -1")):
        make(conv_param={**good, "pad": -1})
    with pytest.raises(ValueError, match=re.escape("SimpleConvNet: conv_param is missing 'stride'")):
        make(conv_param={"filter_num": 2, "filter_size": 3, "pad": 0})
    with pytest.raises(ValueError, match=re.escape("SimpleConvNet: conv_param has unknown key 'strides'")):
        make(conv_param={**good, "strides": 1})
    with pytest.raises(ValueError, match=re.escape("SimpleConvNet: input_dim[1] must be a positive integer, "
                                                   "got 8.0")):
        make(input_dim=(1, 8.0, 8))
    with pytest.raises(ValueError, match=re.escape("SimpleConvNet: input_dim must be (C, H, W), got (8, 8)")):
        make(input_dim=(8, 8))
    with pytest.raises(ValueError, match=re.escape("SimpleConvNet: a 10x10 filter does not fit input_dim "
                                                   "(1, 8, 8) with pad 0")):
        make(conv_param={**good, "filter_size": 10})
    with pytest.raises(ValueError, match=re.escape("DeepConvNet: conv_param_2['filter_size'] must be a positive "
                                                   "integer, got -3")):
        DeepConvNet(conv_param_2={"filter_num": 16, "filter_size": -3, "pad": 1, "stride": 1})
    with pytest.raises(ValueError, match=re.escape("DeepConvNet: input_dim must be (C, H, W), got (28, 28)")):
        DeepConvNet(input_dim=(28, 28))
    with pytest.raises(ValueError, match=re.escape("DeepConvNet: input_dim (1, 40, 40) gives 64x5x5 = 1600 "
                                                   "features before Affine7")):
        DeepConvNet(input_dim=(1, 40, 40))


def test_simple_convnet_sizes_its_affine_from_the_real_pooled_shape():
    # odd convolution output (9 - 3 + 1 = 7 -> pooled 3) and non-square input: the book's float
    # formula gives the wrong row count and the first forward fails; the true shape works
    for dim in ((1, 9, 9), (1, 8, 10)):
        net = SimpleConvNet(dim, {"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1}, 5, 3, seed=0)
        x = RNG.standard_normal((2, *dim))
        assert numpy.isfinite(float(net.loss(x, numpy.array([0, 2]))))
    net = SimpleConvNet(seed=0)  # the book's default layout is unchanged
    assert net.params["W2"].shape == (30 * 12 * 12, 100)


BAD_STD = [float("nan"), float("inf"), -0.1, True, None, "abc", 1j]


@pytest.mark.parametrize("bad", BAD_STD, ids=repr)
@pytest.mark.parametrize("label", [k for k in SIZE_ARGS if k != "DeepConvNet"])
def test_book_networks_refuse_bad_weight_init_std(label, bad):
    make, _ = SIZE_ARGS[label]
    with pytest.raises(ValueError, match=re.escape(f"{_cls(label)}: weight_init_std must be a number >= 0")
                       + r".*" + re.escape(f"got {bad!r}")):
        make(weight_init_std=bad)


@pytest.mark.parametrize("label", ["book.MultiLayerNet", "book.MultiLayerNetExtend", "networks.MultiLayerNet",
                                   "networks.MultiLayerNetExtend", "networks.TwoLayerNet"])
def test_book_networks_keep_the_books_init_spellings(label):
    make, _ = SIZE_ARGS[label]
    for spelling in ("relu", "he", "sigmoid", "xavier", "He", "ReLU", 0, 0.01, numpy.float32(0.01)):
        make(weight_init_std=spelling, seed=0)
    for size in (numpy.int64(5), numpy.int32(5)):
        make(input_size=size, seed=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, "0.1", True, None, 1j], ids=repr)
@pytest.mark.parametrize("label", ["book.MultiLayerNet", "book.MultiLayerNetExtend", "networks.MultiLayerNet",
                                   "networks.MultiLayerNetExtend"])
def test_book_networks_refuse_bad_weight_decay_lambda(label, bad):
    make, _ = SIZE_ARGS[label]
    with pytest.raises(ValueError, match=re.escape(f"{_cls(label)}: weight_decay_lambda must be a finite number "
                                                   f">= 0, got {bad!r}")):
        make(weight_decay_lambda=bad)
    make(weight_decay_lambda=numpy.float64(0.1))


@pytest.mark.parametrize("label", ["book.MultiLayerNetExtend", "networks.MultiLayerNetExtend"])
def test_extend_names_itself_and_dropout_ration_when_the_ratio_is_bad(label):
    make, _ = SIZE_ARGS[label]
    for bad in (1.5, -0.1, float("nan"), "0.5"):
        with pytest.raises(ValueError, match=re.escape(f"MultiLayerNetExtend: dropout_ration must be a number in "
                                                       f"[0, 1), got {bad!r}")):
            make(use_dropout=True, dropout_ration=bad)


# ================================================================ 3. load_mnist on bad files
def _idx_bytes(array, code=0x08):
    return bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


MNIST = {
    "train-images-idx3-ubyte": RNG.integers(0, 256, (5, 28, 28), dtype=numpy.uint8),
    "train-labels-idx1-ubyte": RNG.integers(0, 10, 5, dtype=numpy.uint8),
    "t10k-images-idx3-ubyte": RNG.integers(0, 256, (3, 28, 28), dtype=numpy.uint8),
    "t10k-labels-idx1-ubyte": RNG.integers(0, 10, 3, dtype=numpy.uint8),
}


def _mnist_folder(folder, replace=None):
    """The four files as .gz in ``folder``; ``replace``: {stem: raw bytes written for that file's .gz}."""
    for stem, a in MNIST.items():
        path = folder / (stem + ".gz")
        raw = (replace or {}).get(stem)
        if raw is None:
            with gzip.open(path, "wb") as f:
                f.write(_idx_bytes(a))
        else:
            path.write_bytes(raw)
    return folder


def _gz(data):
    return gzip.compress(data, mtime=0)


def _corruptions():
    good = _gz(_idx_bytes(MNIST["train-images-idx3-ubyte"]))
    flipped_crc = bytearray(good)
    flipped_crc[-6] ^= 0xFF  # the CRC32 in the trailer
    flipped_body = bytearray(good)
    flipped_body[len(good) // 2] ^= 0xFF
    return {
        "truncated": (good[:len(good) // 2], r"gzip stream is cut short|corrupt"),
        "bad crc": (bytes(flipped_crc), r"CRC|corrupt"),
        "bad deflate data": (bytes(flipped_body), r"corrupt|CRC|invalid"),
        "not gzip": (b"this is not a gzip file at all, just text" * 4, r"not a gzip file"),
        "empty": (b"", r"gzip stream is cut short|empty"),
    }


@pytest.mark.parametrize("case", list(_corruptions()))
def test_load_mnist_names_a_corrupt_gz_file(tmp_path, case):
    raw, why = _corruptions()[case]
    _mnist_folder(tmp_path, {"train-images-idx3-ubyte": raw})
    path = str(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match=r"(?s)" + re.escape(f"load_mnist: {path}: ") + r".*(" + why + ")") as err:
        datasets.load_mnist(tmp_path)
    assert "download it again" in str(err.value)
    exc = err.value  # no gzip/zlib traceback attached
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def test_load_mnist_names_the_file_on_wrong_magic_or_size(tmp_path):
    img = MNIST["train-images-idx3-ubyte"]
    cases = {
        "magic": (_gz(b"\x1f\x8b\x08\x03" + _idx_bytes(img)[4:]), r"not an IDX file \(bad magic number"),
        "short": (_gz(_idx_bytes(img)[:-10]), r"IDX header declares shape \(5, 28, 28\) \(3920 bytes\) but the "
                                              r"file holds 3910 bytes"),
        "long": (_gz(_idx_bytes(img) + b"\0"), r"IDX header .* but the file holds 3921 bytes"),
        "header cut": (_gz(_idx_bytes(img)[:9]), r"IDX header declares 3 dimensions"),
    }
    for name, (raw, why) in cases.items():
        _mnist_folder(tmp_path, {"train-images-idx3-ubyte": raw})
        path = str(tmp_path / "train-images-idx3-ubyte.gz")
        with pytest.raises(ValueError, match=re.escape(f"load_mnist: {path}: ") + why):
            datasets.load_mnist(tmp_path)


def test_load_mnist_checks_what_the_files_hold(tmp_path):
    labels = MNIST["train-labels-idx1-ubyte"].copy()
    labels[3] = 12
    wrong = {
        "labels out of range": ("train-labels-idx1-ubyte", _idx_bytes(labels),
                                r"labels must be in \[0, 9\], got 12 at index 3"),
        "labels are images": ("train-labels-idx1-ubyte", _idx_bytes(MNIST["train-images-idx3-ubyte"]),
                              r"expected labels of shape \(N,\), got shape \(5, 28, 28\)"),
        "images are labels": ("train-images-idx3-ubyte", _idx_bytes(MNIST["train-labels-idx1-ubyte"]),
                              r"expected images of shape \(N, rows, cols\), got shape \(5,\)"),
        "float images": ("train-images-idx3-ubyte",
                         _idx_bytes(MNIST["train-images-idx3-ubyte"].astype(">f4"), code=0x0D),
                         r"expected unsigned bytes \(IDX type 0x08, as the file names say: ubyte\), got >f4"),
    }
    for name, (stem, raw, why) in wrong.items():
        _mnist_folder(tmp_path, {stem: _gz(raw)})
        path = str(tmp_path / (stem + ".gz"))
        with pytest.raises(ValueError, match=re.escape(f"load_mnist: {path}: ") + why):
            datasets.load_mnist(tmp_path)


def test_read_idx_refuses_a_fifo_instead_of_blocking(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs os.mkfifo")
    fifo = tmp_path / "train-images-idx3-ubyte"
    os.mkfifo(fifo)
    result = {}

    def read():
        try:
            datasets.read_idx(fifo)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            result["error"] = exc

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():  # unblock the reader before failing
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(5)
        pytest.fail("read_idx blocked on a FIFO")
    assert isinstance(result.get("error"), ValueError)
    assert re.search(re.escape(str(fifo)) + r": not a regular file", str(result["error"]))


def test_read_idx_refuses_a_gz_that_cannot_hold_its_declared_size(tmp_path):
    # a 50-byte .gz declaring 2**40 bytes of data: refused from the header, before any large read
    path = tmp_path / "huge.gz"
    path.write_bytes(_gz(bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 2**20, 2**20)))
    with pytest.raises(ValueError, match=re.escape(f"{path}: IDX header declares shape (1048576, 1048576)")
                       + r".*more than a \d+-byte gzip file can hold"):
        datasets.read_idx(path)


def test_load_mnist_still_reads_good_files(tmp_path):
    (xtr, ttr), (xte, tte) = datasets.load_mnist(_mnist_folder(tmp_path))
    assert xtr.shape == (5, 784) and tte.tolist() == MNIST["t10k-labels-idx1-ubyte"].tolist()


@pytest.mark.parametrize("kw, why", [
    ({"samples_per_class": 2.5}, "samples_per_class must be a positive integer, got 2.5"),
    ({"samples_per_class": 0}, "samples_per_class must be a positive integer, got 0"),
    ({"classes": "3"}, "classes must be a positive integer, got '3'"),
    ({"noise": float("nan")}, "noise must be a finite number >= 0, got nan"),
    ({"noise": -1}, "noise must be a finite number >= 0, got -1"),
])
def test_make_spiral_refuses_bad_arguments(kw, why):
    with pytest.raises(ValueError, match=re.escape(f"make_spiral: {why}")):
        datasets.make_spiral(**kw)


# ================================================================ 4. numerical_gradient, gradcheck, utils
def _sq(v):
    return float((v ** 2).sum())


def test_numerical_gradient_refuses_non_real_x_and_names_the_dtype():
    for kind, a in BAD_ARRAYS.items():
        with pytest.raises(TypeError, match=re.escape("numerical_gradient: x must be a float array")
                           + r".*" + re.escape(f"dtype {BAD_DTYPE[kind]}")):
            F.numerical_gradient(_sq, a())
        with pytest.raises(TypeError, match=re.escape("numerical_gradient: x must be a float array")):
            BG.numerical_gradient(_sq, a())


def test_numerical_gradient_refuses_nan_x_and_leaves_it_alone():
    x = numpy.array([1.0, numpy.nan, 2.0])
    with pytest.raises(ValueError, match=re.escape("numerical_gradient: x contains NaN or infinite values "
                                                   "(first at index (1,): nan)")):
        F.numerical_gradient(_sq, x)
    assert x[0] == 1.0 and x[2] == 2.0


@pytest.mark.parametrize("value, err, why", [
    (float("nan"), ValueError, r"f returned nan at x\[\(0,\)\] \+ h"),
    (float("inf"), ValueError, r"f returned inf at x\[\(0,\)\] \+ h"),
    (None, TypeError, r"f must return a real number \(or one per row\), got NoneType"),
    (1 + 1j, TypeError, r"f must return a real number \(or one per row\), got complex"),
    ("a", TypeError, r"f must return a real number \(or one per row\), got str"),
])
def test_numerical_gradient_refuses_what_f_returns(value, err, why):
    x = numpy.array([1.0, 2.0])
    with pytest.raises(err, match="numerical_gradient: " + why):
        F.numerical_gradient(lambda v: value, x)
    assert x.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("h", [0, -1e-4, float("nan"), float("inf"), "1e-4", 1j, True, None], ids=repr)
def test_numerical_gradient_refuses_a_bad_step(h):
    with pytest.raises(ValueError, match=re.escape(f"numerical_gradient: h must be a finite number > 0, got {h!r}")):
        F.numerical_gradient(_sq, numpy.array([1.0, 2.0]), h)


def test_gradient_descent_refuses_bad_arguments():
    for kind, a in BAD_ARRAYS.items():
        with pytest.raises(TypeError, match=re.escape("gradient_descent: init_x must hold real numbers")
                           + r".*" + re.escape(f"dtype {BAD_DTYPE[kind]}")):
            F.gradient_descent(_sq, a())
    with pytest.raises(ValueError, match=re.escape("gradient_descent: init_x contains NaN or infinite values")):
        F.gradient_descent(_sq, numpy.array([numpy.nan, 1.0]))
    for lr in (float("nan"), "0.1", 1j, None):
        with pytest.raises(ValueError, match=re.escape(f"gradient_descent: lr must be a finite real number, "
                                                       f"got {lr!r}")):
            F.gradient_descent(_sq, numpy.ones(2), lr=lr)
    for steps in (-1, 2.5, True, "10"):
        with pytest.raises(ValueError, match=re.escape(f"gradient_descent: step_num must be an integer >= 0, "
                                                       f"got {steps!r}")):
            F.gradient_descent(_sq, numpy.ones(2), step_num=steps)
    x, history = F.gradient_descent(_sq, [1.0, 2.0], lr=0.1, step_num=2)  # a list of numbers still works
    assert history.shape == (2, 2)


def test_gradcheck_refuses_nan_x_non_real_dout_and_bad_tolerances():
    with pytest.raises(ValueError, match=re.escape("check_layer: x contains NaN or infinite values "
                                                   "(first at index (0, 0): nan)")):
        gradcheck.check_layer(L.Relu(), numpy.array([[numpy.nan, 1.0]]))
    for kind, a in BAD_ARRAYS.items():
        with pytest.raises(TypeError, match=re.escape("check_layer: x must be a float array")):
            gradcheck.check_layer(L.Sigmoid(), a())
    with pytest.raises(TypeError, match=re.escape("check_layer: dout must hold real numbers")
                       + r".*" + re.escape("dtype complex128 of shape (2, 3)")):
        gradcheck.check_layer(L.Sigmoid(), numpy.ones((2, 3)), dout=numpy.ones((2, 3), complex))
    with pytest.raises(ValueError, match=re.escape("check_layer: dout must have the forward output's shape (2, 3), "
                                                   "got (3, 3)")):
        gradcheck.check_layer(L.Sigmoid(), numpy.ones((2, 3)), dout=numpy.ones((3, 3)))
    for arg, bad in (("rtol", float("nan")), ("atol", -1.0), ("rtol", "1e-5"), ("h", 0)):
        with pytest.raises(ValueError, match=re.escape(f"check_layer: {arg} must be")):
            gradcheck.check_layer(L.Sigmoid(), numpy.ones((2, 3)), **{arg: bad})
    with pytest.raises(ValueError, match=re.escape("check_loss: x contains NaN or infinite values")):
        gradcheck.check_loss(L.SoftmaxWithLoss(), numpy.array([[numpy.nan, 1.0]]), numpy.array([0]))
    with pytest.raises(TypeError, match=re.escape("check_loss: x must be a float array")):
        gradcheck.check_loss(L.SoftmaxWithLoss(), numpy.ones((2, 3), complex), numpy.array([0, 1]))
    with pytest.raises(ValueError, match=re.escape("check_loss: rtol must be")):
        gradcheck.check_loss(L.SoftmaxWithLoss(), numpy.ones((2, 3)), numpy.array([0, 1]), rtol=float("nan"))


def test_gradcheck_still_passes_a_correct_layer():
    gradcheck.check_layer(L.Sigmoid(), RNG.standard_normal((3, 4)))
    gradcheck.check_loss(L.SoftmaxWithLoss(), RNG.standard_normal((3, 4)), numpy.array([0, 3, 1]))


@pytest.mark.parametrize("dtype", ["complex64", object, "U3", "S2", "datetime64[s]"], ids=str)
def test_to_categorical_and_one_hot_refuse_a_non_real_output_dtype(dtype):
    shown = numpy.dtype(dtype)
    with pytest.raises(TypeError, match=re.escape(f"to_categorical: dtype must be a real numeric type "
                                                  f"(float, int or bool), got {shown}")):
        utils.to_categorical([0, 1], 2, dtype=dtype)
    with pytest.raises(TypeError, match=re.escape(f"one_hot: dtype must be a real numeric type (float, int or bool), "
                                                  f"got {shown}")):
        datasets.one_hot([0, 1], 2, dtype=dtype)


def test_to_categorical_refuses_non_real_labels_and_nan():
    for kind, a in BAD_ARRAYS.items():
        with pytest.raises(TypeError, match=re.escape(f"to_categorical: class indices must be numbers, got dtype "
                                                      f"{BAD_DTYPE[kind]}")):
            utils.to_categorical(a()[:, 0])
    with pytest.raises(ValueError, match=re.escape("to_categorical: class indices must be whole numbers, got nan")):
        utils.to_categorical([numpy.nan, 1.0])
    with pytest.raises(ValueError, match=re.escape("to_categorical: num_classes must be a positive integer, got 2.5")):
        utils.to_categorical([0, 1], 2.5)
    assert utils.to_categorical([[1], [0]], numpy.int64(3), dtype="int32").tolist() == [[0, 1, 0], [1, 0, 0]]


def test_one_hot_refuses_negative_and_fractional_indices():
    with pytest.raises(ValueError, match=re.escape("one_hot: class indices must be >= 0, got -1")):
        datasets.one_hot([-1])
    with pytest.raises(ValueError, match=re.escape("one_hot: class indices must be whole numbers, got 1.7")):
        datasets.one_hot([1.7])
    with pytest.raises(ValueError, match=re.escape("one_hot: class index 3 is out of range for 3 classes")):
        datasets.one_hot([3], 3)


def test_shuffle_dataset_refuses_x_and_t_of_different_lengths():
    with pytest.raises(ValueError, match=re.escape("shuffle_dataset: x has 4 samples but t has 5")):
        BU.shuffle_dataset(numpy.zeros((4, 2)), numpy.zeros(5))
