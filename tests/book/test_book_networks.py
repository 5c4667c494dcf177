"""fastnn.book's networks and Trainer: the book's architectures, names, initial weights, gradients,
and its parameter files (loaded safely)."""
import os
import pickle

import numpy
import pytest

import fastnn
from fastnn.book import ch04, ch05, ch07, ch08
from fastnn.book.deep_convnet import DeepConvNet
from fastnn.book.multi_layer_net import MultiLayerNet
from fastnn.book.multi_layer_net_extend import MultiLayerNetExtend
from fastnn.book.simple_convnet import SimpleConvNet
from fastnn.book.trainer import Trainer
from fastnn.book.two_layer_net import TwoLayerNet
from fastnn.testing import host


def sigmoid(x):
    return 1 / (1 + numpy.exp(-x))


def softmax(x):
    e = numpy.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def batch(n=4, d=6, c=3, seed=0):
    rng = numpy.random.default_rng(seed)
    return rng.standard_normal((n, d)), numpy.eye(c)[rng.integers(0, c, n)]


def assert_grads_close(backprop, numeric, tol=1e-6):
    assert set(backprop) == set(numeric)
    for key in numeric:
        err = numpy.abs(host(backprop[key]) - host(numeric[key])).max()
        assert err < tol, f"{key}: max |backprop - numerical| = {err:.2e}"


def test_chapter_modules_pick_the_right_two_layer_net():
    assert ch05.TwoLayerNet is TwoLayerNet
    assert ch04.TwoLayerNet is not TwoLayerNet
    assert ch07.SimpleConvNet is SimpleConvNet and ch08.DeepConvNet is DeepConvNet


def test_np_random_seed_gives_the_books_initial_weights():
    numpy.random.seed(5)
    net = TwoLayerNet(4, 3, 2)
    numpy.random.seed(5)
    W1, W2 = 0.01 * numpy.random.randn(4, 3), 0.01 * numpy.random.randn(3, 2)
    numpy.testing.assert_array_equal(net.params["W1"], W1)
    numpy.testing.assert_array_equal(net.params["W2"], W2)
    assert net.params["W1"].dtype == numpy.float64


def test_ch04_two_layer_net_is_a_sigmoid_network(ops):
    net = ch04.TwoLayerNet(6, 5, 3, weight_init_std=0.5, seed=1, backend=ops.name)
    x, t = batch()
    p = {k: host(v) for k, v in net.params.items()}
    y = softmax(sigmoid(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"])  # probabilities, not scores
    numpy.testing.assert_allclose(host(net.predict(ops.asarray(x))), y, rtol=1e-12)
    assert float(net.loss(ops.asarray(x), ops.asarray(t))) == pytest.approx(
        -numpy.sum(numpy.log(y[t == 1] + 1e-7)) / 4, rel=1e-12)
    assert_grads_close(net.gradient(ops.asarray(x), ops.asarray(t)),
                       net.numerical_gradient(ops.asarray(x), ops.asarray(t)))


def test_ch05_two_layer_net_is_relu_backprop(ops):
    net = TwoLayerNet(6, 5, 3, weight_init_std=0.5, seed=2, backend=ops.name)
    assert list(net.layers) == ["Affine1", "Relu1", "Affine2"]
    x, t = batch()
    p = {k: host(v) for k, v in net.params.items()}
    numpy.testing.assert_allclose(host(net.predict(ops.asarray(x))),
                                  numpy.maximum(0, x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"], rtol=1e-12)
    assert net.params["W1"] is net.layers["Affine1"].W
    assert_grads_close(net.gradient(ops.asarray(x), ops.asarray(t)),
                       net.numerical_gradient(ops.asarray(x), ops.asarray(t)))


def test_multi_layer_net_names_and_weight_decay(ops):
    net = MultiLayerNet(6, [5, 4], 3, activation="sigmoid", weight_init_std="xavier", weight_decay_lambda=0.1,
                        seed=3, backend=ops.name)
    assert list(net.layers) == ["Affine1", "Activation_function1", "Affine2", "Activation_function2", "Affine3"]
    assert list(net.params) == ["W1", "b1", "W2", "b2", "W3", "b3"]
    x, t = batch()
    p = {k: host(v) for k, v in net.params.items()}
    h = sigmoid(sigmoid(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"])
    y = softmax(h @ p["W3"] + p["b3"])
    decay = 0.5 * 0.1 * sum(numpy.sum(p[f"W{i}"] ** 2) for i in (1, 2, 3))
    assert float(net.loss(ops.asarray(x), ops.asarray(t))) == pytest.approx(
        -numpy.sum(numpy.log(y[t == 1] + 1e-7)) / 4 + decay, rel=1e-12)
    assert_grads_close(net.gradient(ops.asarray(x), ops.asarray(t)),
                       net.numerical_gradient(ops.asarray(x), ops.asarray(t)))


def test_multi_layer_net_extend_with_dropout_and_batchnorm(ops):
    net = MultiLayerNetExtend(6, [5, 4], 3, activation="sigmoid", use_dropout=True, dropout_ration=0.3,
                              use_batchnorm=True, weight_decay_lambda=0.05, seed=4, backend=ops.name)
    assert list(net.layers)[:4] == ["Affine1", "BatchNorm1", "Activation_function1", "Dropout1"]
    assert {"gamma1", "beta1", "gamma2", "beta2"} <= set(net.params)
    x, t = batch(n=8)
    x, t = ops.asarray(x), ops.asarray(t)
    assert_grads_close(net.gradient(x, t), net.numerical_gradient(x, t))


def test_book_batch_norm_gradient_check_on_one_sample(ops):
    """ch06/batch_norm_gradient_check: MultiLayerNetExtend(use_batchnorm=True) on x_train[:1]."""
    net = MultiLayerNetExtend(8, [6, 5], 3, activation="sigmoid", use_batchnorm=True, seed=6, backend=ops.name)
    x, t = batch(n=1, d=8)
    x, t = ops.asarray(x), ops.asarray(t)
    backprop, numeric = net.gradient(x, t), net.numerical_gradient(x, t)
    assert_grads_close(backprop, numeric)
    numpy.testing.assert_allclose(host(backprop["W1"]), 0.0, atol=1e-12)  # x - mean is 0 for one sample


def test_dropout_network_inference_scales_by_one_minus_ratio(ops):
    net = MultiLayerNetExtend(6, [5], 3, use_dropout=True, dropout_ration=0.4, seed=7, backend=ops.name)
    x, _ = batch()
    p = {k: host(v) for k, v in net.params.items()}
    expected = 0.6 * numpy.maximum(0, x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
    numpy.testing.assert_allclose(host(net.predict(ops.asarray(x), train_flg=False)), expected, rtol=1e-12)


def test_simple_convnet_gradient_and_params(ops):
    net = SimpleConvNet(input_dim=(1, 8, 8), conv_param={"filter_num": 3, "filter_size": 3, "pad": 0, "stride": 1},
                        hidden_size=5, output_size=3, weight_init_std=0.3, seed=8, backend=ops.name)
    assert list(net.layers) == ["Conv1", "Relu1", "Pool1", "Affine1", "Relu2", "Affine2"]
    assert net.params["W1"].shape == (3, 1, 3, 3) and net.params["W2"].shape == (27, 5)
    x = ops.asarray(numpy.random.default_rng(0).random((2, 1, 8, 8)))
    t = ops.asarray(numpy.array([0, 2]))
    assert_grads_close(net.gradient(x, t), net.numerical_gradient(x, t))


def test_accuracy_counts_every_sample():
    net = SimpleConvNet(input_dim=(1, 8, 8), conv_param={"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1},
                        hidden_size=4, output_size=3, seed=9)
    x = numpy.random.default_rng(1).random((7, 1, 8, 8))
    t = host(net.predict(x)).argmax(axis=1)
    assert net.accuracy(x, t, batch_size=3) == 1.0


def deep_reference(params, x):
    """The book's DeepConvNet at inference, from its definition: ReLU convolutions, 2x2 max pools,
    Affine-ReLU-Dropout-Affine-Dropout with the non-inverted Dropout's factor (1 - 0.5) twice."""
    def conv(x, W, b, pad):
        n, c, h, w = x.shape
        fn, _, fh, fw = W.shape
        xp = numpy.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
        oh, ow = h + 2 * pad - fh + 1, w + 2 * pad - fw + 1
        out = numpy.zeros((n, fn, oh, ow))
        for ky in range(fh):
            for kx in range(fw):
                out += numpy.einsum("nchw,fc->nfhw", xp[:, :, ky:ky + oh, kx:kx + ow], W[:, :, ky, kx])
        return numpy.maximum(0, out + b[None, :, None, None])

    def pool(x):
        n, c, h, w = x.shape
        return x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))

    pads = (1, 1, 1, 2, 1, 1)
    for i in range(0, 6, 2):
        x = conv(x, params[f"W{i + 1}"], params[f"b{i + 1}"], pads[i])
        x = pool(conv(x, params[f"W{i + 2}"], params[f"b{i + 2}"], pads[i + 1]))
    h = numpy.maximum(0, x.reshape(len(x), -1) @ params["W7"] + params["b7"]) * 0.5
    return (h @ params["W8"] + params["b8"]) * 0.5


def test_deep_convnet_pretrained_file_gives_the_books_outputs(ops, tmp_path):
    rng = numpy.random.default_rng(10)
    shapes = {k: v.shape for k, v in DeepConvNet(seed=0).params.items()}
    params = {k: rng.standard_normal(s) * (0.3 if k.startswith("W") else 0.1) for k, s in shapes.items()}
    path = tmp_path / "deep_convnet_params.pkl"
    with open(path, "wb") as f:
        pickle.dump(params, f)  # the book's save_params format
    net = DeepConvNet(seed=1, backend=ops.name)
    net.load_params(str(path))
    assert net.params["W1"] is net.layers[0].W  # loaded in place: still the layers' arrays
    x = rng.random((2, 1, 28, 28)).astype(numpy.float32)
    numpy.testing.assert_allclose(host(net.predict(ops.asarray(x))), deep_reference(params, x.astype(numpy.float64)),
                                  rtol=1e-10, atol=1e-10)
    out = tmp_path / "saved.pkl"
    net.save_params(str(out))
    with open(out, "rb") as f:
        again = pickle.load(f)
    numpy.testing.assert_array_equal(again["W8"], params["W8"])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_load_params_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"W1": _Evil()}, f)
    net = SimpleConvNet(seed=0)
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|nt.system"):
        net.load_params(str(path))
    with open(path, "wb") as f:
        pickle.dump({"W1": numpy.zeros((2, 2))}, f)
    with pytest.raises(ValueError, match="shape"):
        net.load_params(str(path))


def test_trainer_runs_the_books_loop(backend):
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((60, 6))
    t = (x[:, 0] > 0).astype(numpy.int64)
    with fastnn.using(backend):
        net = MultiLayerNet(6, [8], 2, seed=0)
        trainer = Trainer(net, x, t, x[:20], t[:20], epochs=3, mini_batch_size=20, optimizer="Adam",
                          optimizer_param={"lr": 0.05}, verbose=False, seed=1)
        trainer.train()
    assert trainer.max_iter == 9 and len(trainer.train_loss_list) == 9
    assert len(trainer.train_acc_list) == len(trainer.test_acc_list) == 3
    assert trainer.train_loss_list[-1] < trainer.train_loss_list[0]
    default = Trainer(net, x, t, x, t, verbose=False)
    assert type(default.optimizer).__name__ == "SGD" and default.optimizer.lr == 0.01
