"""Callbacks: history, progress output, early stopping, NaN handling, learning-rate control, CSV, plots."""
import io

import numpy
import pytest

from fastnn import callbacks as C
from fastnn import optimizers
from fastnn.layers import Dense
from fastnn.models import Sequential


def data(n=120, seed=0):
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(numpy.float32)
    t = (x[:, 0] + x[:, 1] > 0).astype(numpy.int64)
    return x, t


def model(lr=0.05, seed=0, optimizer=None):
    m = Sequential([Dense(8, activation="relu", input_shape=(4,)), Dense(2, activation="softmax")], seed=seed)
    m.compile(optimizer=optimizer or optimizers.SGD(lr=lr), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    return m


def test_progress_in_a_non_terminal_is_one_line_per_epoch():
    x, t = data()
    stream = io.StringIO()
    m = model()
    m.fit(x, t, epochs=3, verbose=0, callbacks=[C.ProgressBar(verbose=1, stream=stream)], validation_data=(x, t))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"epoch {i + 1}/3 - ") for i, line in enumerate(lines))
    assert "loss: " in lines[0] and "val_accuracy: " in lines[0] and "samples/s" in lines[0]
    assert "\r" not in stream.getvalue() and "\b" not in stream.getvalue()


def test_verbose_zero_prints_nothing(capsys):
    x, t = data()
    model().fit(x, t, epochs=2, verbose=0)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_verbose_two_prints_epoch_lines_on_stdout(capsys):
    x, t = data()
    model().fit(x, t, epochs=2, verbose=2)
    out = capsys.readouterr().out.splitlines()  # Keras writes progress to stdout (issue 18)
    assert len(out) == 2 and out[1].startswith("epoch 2/2")


def test_early_stopping_restores_the_best_weights_even_without_triggering():
    x, t = data()
    m = model()
    seen = []
    record = C.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append((logs["val_loss"], m.get_weights())))
    stopper = C.EarlyStopping(monitor="val_loss", patience=100, restore_best_weights=True)
    m.fit(x, t, epochs=6, verbose=0, validation_data=(x[:30], t[:30]), callbacks=[record, stopper])
    assert stopper.stopped_epoch == 0  # never triggered
    best = min(range(len(seen)), key=lambda i: seen[i][0])
    for a, b in zip(m.get_weights(), seen[best][1]):
        numpy.testing.assert_array_equal(a, b)


def test_early_stopping_stops_after_patience():
    x, t = data()
    m = model(lr=0.0)  # nothing improves
    history = m.fit(x, t, epochs=20, verbose=0, callbacks=[C.EarlyStopping(monitor="loss", patience=2, min_delta=1e-3)])
    assert len(history.epoch) == 3
    with pytest.raises(KeyError, match="monitor 'val_loss' is not in the logs"):
        model().fit(x, t, epochs=1, verbose=0, callbacks=[C.EarlyStopping()])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_terminate_on_nan_stops_a_diverging_model():
    x, t = data()
    x = x * 1e3
    m = model(lr=1e6)
    history = m.fit(x, t, epochs=50, batch_size=8, verbose=0, callbacks=[C.TerminateOnNaN()])
    assert len(history.epoch) < 50


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_terminate_on_nan_raises_naming_the_batch():
    x, t = data()
    m = model(lr=1e6)
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf) at epoch \d+, batch \d+"):
        m.fit(x * 1e3, t, epochs=50, batch_size=8, verbose=0, callbacks=[C.TerminateOnNaN(raise_error=True)])


def test_learning_rate_scheduler_and_reduce_on_plateau():
    x, t = data()
    m = model(lr=0.1)
    h = m.fit(x, t, epochs=3, verbose=0, callbacks=[C.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))])
    assert h.history["lr"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    m2 = model(lr=0.0)
    m2.optimizer.lr = 1e-9
    plateau = C.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=1e-3)
    m2.fit(x, t, epochs=4, verbose=0, callbacks=[plateau])
    assert m2.optimizer.lr == pytest.approx(1e-9 * 0.5 ** 3)


def test_csv_logger(tmp_path):
    x, t = data()
    path = tmp_path / "log.csv"
    model().fit(x, t, epochs=3, verbose=0, callbacks=[C.CSVLogger(path)])
    rows = path.read_text().splitlines()
    assert rows[0] == "epoch,accuracy,loss" and len(rows) == 4 and rows[3].startswith("2,")


def test_callback_hooks_are_called_in_order():
    x, t = data(40)
    events = []

    class Recorder(C.Callback):
        def on_train_begin(self, logs=None): events.append("train_begin")
        def on_epoch_begin(self, epoch, logs=None): events.append(f"epoch_begin {epoch}")
        def on_batch_end(self, batch, logs=None): events.append(f"batch_end {batch} {logs['size']}")
        def on_epoch_end(self, epoch, logs=None): events.append(f"epoch_end {epoch}")
        def on_train_end(self, logs=None): events.append("train_end")

    model().fit(x, t, epochs=2, batch_size=32, verbose=0, callbacks=[Recorder()])
    assert events == ["train_begin", "epoch_begin 0", "batch_end 0 32", "batch_end 1 8", "epoch_end 0",
                      "epoch_begin 1", "batch_end 0 32", "batch_end 1 8", "epoch_end 1", "train_end"]


def test_stop_training_from_a_batch_hook():
    x, t = data()
    m = model()

    def stop(batch, logs):
        m.stop_training = True

    h = m.fit(x, t, epochs=5, verbose=0, callbacks=[C.LambdaCallback(on_batch_end=stop)])
    assert h.epoch == [0]


def test_history_plot_and_plot_curves_write_decodable_pngs(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    x, t = data()
    live = tmp_path / "live.png"
    h = model().fit(x, t, epochs=3, verbose=0, validation_data=(x, t), callbacks=[C.PlotCurves(live)])
    path = h.plot(tmp_path / "curves.png")
    for p in (path, live):
        pixels = image.imread(p)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 0  # not a blank image
