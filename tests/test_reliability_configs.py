"""Issue 16, low: constructors name their class and argument for bad values (no bare "could not convert
string to float"), and a saved file whose config would build a layer that fails later is refused at
load with a ``FormatError`` naming the file."""
import io
import json
import zipfile

import numpy
import pytest

from fastnn import FormatError, optimizers
from fastnn.models import load_model
from fastnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten
from fastnn.models import Sequential


@pytest.mark.parametrize("make, error, match", [
    (lambda: Dropout(0.5, seed="abc"), ValueError, r"\(Dropout\): seed must be an integer in \[0, 2\*\*63\).*'abc'"),
    (lambda: Dropout(0.5, seed=-1), ValueError, r"\(Dropout\): seed must be an integer"),
    (lambda: Dropout(0.5, seed=True), ValueError, r"\(Dropout\): seed must be an integer"),
    (lambda: BatchNormalization(momentum="x"), ValueError, r"\(BatchNormalization\): momentum must be a finite number, got 'x'"),
    (lambda: BatchNormalization(epsilon=float("nan")), ValueError, r"\(BatchNormalization\): epsilon must be a finite"),
    (lambda: BatchNormalization(epsilon=0), ValueError, r"\(BatchNormalization\): epsilon must be > 0"),
    (lambda: Dense(3, kernel_initializer="nope"), ValueError, r"\(Dense\): kernel_initializer: unknown initializer 'nope'"),
    (lambda: Conv2D(3, 3, bias_initializer=object()), TypeError, r"\(Conv2D\): bias_initializer: initializer must be"),
    (lambda: Dense(3, input_shape="784"), ValueError, r"\(Dense\): input_shape must be the shape of one sample.*'784'"),
    (lambda: Dense(3, input_shape=2.5), ValueError, r"\(Dense\): input_shape must be .*2\.5"),
    (lambda: Flatten(input_shape=(0,)), ValueError, r"\(Flatten\): input_shape must be .*\(0,\)"),
    (lambda: optimizers.Adam(beta1="x"), ValueError, r"Adam: beta1 must be a number in \[0, 1\), got 'x'"),
    (lambda: optimizers.RMSprop(rho="0.9"), ValueError, r"RMSprop: rho must be a number in \[0, 1\), got '0.9'"),
])
def test_constructors_name_class_argument_and_value(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_keras_input_shape_spellings_still_work():
    assert Dense(3, input_shape=784).input_shape == (784,)
    assert Dense(3, input_shape=[5]).input_shape == (5,)
    assert Dense(3, input_shape=(numpy.int64(7),)).input_shape == (7,)
    assert Dropout(0.5, seed=numpy.uint32(9)).seed == 9


def _saved(tmp_path):
    m = Sequential([Dense(4, activation="relu", input_shape=(3,)), Dropout(0.5, seed=5), Dense(2)], seed=0)
    m.compile("sgd", "mse")
    path = tmp_path / "m.fastnn"
    m.save(path)
    return path


def _rewrite(path, member, change):
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members[member] = json.dumps(change(json.loads(members[member]))).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    path.write_bytes(buf.getvalue())


def test_a_config_that_would_fail_later_is_refused_at_load(tmp_path):
    path = _saved(tmp_path)

    def bad_seed(config):
        config["config"]["layers"][1]["config"]["seed"] = "abc"
        return config
    _rewrite(path, "config.json", bad_seed)
    with pytest.raises(FormatError, match=r"m\.fastnn.*layer 1.*seed must be an integer"):
        load_model(path)


@pytest.mark.parametrize("version", [-7, 0])
def test_a_format_version_below_one_is_refused(tmp_path, version):
    path = _saved(tmp_path)
    _rewrite(path, "metadata.json", lambda meta: dict(meta, format_version=version))
    with pytest.raises(FormatError, match=rf"format_version must be a positive integer, got {version}"):
        load_model(path)
