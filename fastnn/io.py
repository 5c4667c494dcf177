"""Saving and loading models safely, and atomic file writes.

A ``.fastnn`` file is a zip of ``config.json`` (architecture and compile settings),
``metadata.json`` (format version, fastnn version, backend, dtype), ``weights.npz`` and, when
saved, ``optimizer.npz`` (slots and step count) and ``training.json`` (a checkpoint's loop state).

Loading never executes anything from a file: class names map through ``fastnn.registry``'s fixed
tables, arrays are read with ``allow_pickle=False``, member names and sizes are checked from the
zip directory before anything is decompressed, every array header (dtype, shape) is checked before
its data is read, and the weights must match the architecture. Every failure raises
``fastnn.FormatError`` naming the file, the member and what is wrong.

Writes are atomic: a temporary file in the target's directory, ``fsync``, ``os.replace``, and an
``fsync`` of the directory, so a crash leaves either the old file or the new one.
"""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
import zipfile

import numpy

from fastnn._version import __version__
from fastnn.errors import FormatError

FORMAT_VERSION = 1
MEMBERS = ("config.json", "metadata.json", "weights.npz", "optimizer.npz", "training.json")
MAX_JSON_BYTES = 16 << 20
MAX_ARRAY_BYTES = 8 << 30
MAX_TOTAL_BYTES = 16 << 30
MAX_RATIO = 200  # uncompressed / compressed, above 1 MiB: a zip bomb, not weights
TMP_PREFIX = ".fastnn-tmp-"
_FLOAT_DTYPES = {"<f4", "<f8"}


# ---------------------------------------------------------------- atomic writes
def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path, data: bytes):
    """Write ``data`` to ``path`` atomically (temporary file, fsync, replace, fsync of the directory)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)


def clean_stale_temporaries(folder):
    """Remove temporaries left by writers that crashed (any ``.fastnn-tmp-*`` in ``folder``)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    removed = 0
    for name in names:
        if name.startswith(TMP_PREFIX):
            try:
                os.unlink(os.path.join(folder, name))
                removed += 1
            except OSError:
                pass
    return removed


# ---------------------------------------------------------------- writing
def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    numpy.savez(buf, **{k: numpy.array(v, order="C", copy=True) for k, v in arrays.items()})
    return buf.getvalue()


def model_config(model):
    from fastnn.losses import CustomLoss

    layers = []
    for layer in model.layers:
        try:
            cfg = layer.get_config()
        except TypeError as exc:
            raise TypeError(f"{model.name}: cannot save layer {layer.name}: {exc}") from None
        layers.append({"class_name": type(layer).__name__, "config": cfg})
    config = {"class_name": "Sequential", "config": {
        "name": model.name, "dtype": str(model.dtype), "layers": layers,
        "input_shape": list(model.input_shape) if model.input_shape else None}}
    compile_cfg = None
    if model.optimizer is not None and model.loss is not None and not isinstance(model.loss, CustomLoss):
        compile_cfg = {
            "optimizer": {"class_name": type(model.optimizer).__name__, "config": model.optimizer.get_config()},
            "loss": {"class_name": model.loss.name, "config": {"from_logits": model.loss.from_logits}},
            "metrics": [m.name for m in model.metrics],
        }
    config["compile"] = compile_cfg
    return config


def optimizer_arrays(model):
    opt = model.optimizer
    if opt is None:
        return {}
    arrays = {"iterations": numpy.array(opt.iterations, dtype=numpy.int64)}
    for name, slot in zip(opt.slots, opt.flat_slots or ()):
        arrays[name] = model.ops.asnumpy(slot)
    return arrays


def model_zip_bytes(model, include_optimizer=True, training=None) -> bytes:
    """The bytes of a ``.fastnn`` zip for ``model`` (and a checkpoint's ``training`` state)."""
    if not model.built:
        raise ValueError(f"{model.name}: save needs a built model")
    config = model_config(model)
    metadata = {"format": "fastnn", "format_version": FORMAT_VERSION, "fastnn_version": __version__,
                "backend": model.ops.name, "dtype": str(model.dtype), "step": int(model._step)}
    weights = _weights_dict(model)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", json.dumps(config, indent=1))
        zf.writestr("metadata.json", json.dumps(metadata, indent=1))
        zf.writestr("weights.npz", _npz_bytes(weights))
        if include_optimizer and model.optimizer is not None:
            zf.writestr("optimizer.npz", _npz_bytes(optimizer_arrays(model)))
        if training is not None:
            zf.writestr("training.json", json.dumps(training))
    return buf.getvalue()


def save_model(model, path, include_optimizer=True):
    """Write ``model`` (architecture, compile settings, weights, optimizer state) to ``path`` atomically."""
    write_atomic(path, model_zip_bytes(model, include_optimizer))


# ---------------------------------------------------------------- reading
class _Reader:
    """Checks a zip's directory, then reads members on demand, raising FormatError for anything odd."""

    def __init__(self, path, allowed=MEMBERS):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
        except OSError as exc:
            raise FormatError(f"{self.path}: cannot read the file ({exc.strerror or exc})") from None
        if size > MAX_TOTAL_BYTES:
            raise FormatError(f"{self.path}: the file is {size} bytes, more than the {MAX_TOTAL_BYTES} allowed")
        try:
            with open(self.path, "rb") as f:
                self.data = f.read()
            self.zf = zipfile.ZipFile(io.BytesIO(self.data))
            infos = self.zf.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
            raise FormatError(f"{self.path}: not a fastnn file (not a readable zip: {exc})") from None
        self.infos = {}
        total = 0
        for info in infos:
            name = info.filename
            if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/") or ":" in name:
                raise FormatError(f"{self.path}: member {name!r} has an unsafe name (absolute or with '..')")
            if name not in allowed:
                raise FormatError(f"{self.path}: unexpected member {name!r}; a fastnn file holds only {', '.join(allowed)}")
            if name in self.infos:
                raise FormatError(f"{self.path}: member {name!r} appears twice")
            limit = MAX_JSON_BYTES if name.endswith(".json") else MAX_ARRAY_BYTES
            if info.file_size > limit:
                raise FormatError(f"{self.path}: member {name!r} declares {info.file_size} bytes, more than {limit}")
            if info.file_size > (1 << 20) and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise FormatError(f"{self.path}: member {name!r} expands {info.file_size // max(info.compress_size, 1)}x; refused")
            total += info.file_size
            self.infos[name] = info
        if total > MAX_TOTAL_BYTES:
            raise FormatError(f"{self.path}: members declare {total} bytes in all, more than {MAX_TOTAL_BYTES}")

    def has(self, name):
        return name in self.infos

    def read(self, name):
        if name not in self.infos:
            raise FormatError(f"{self.path}: member {name!r} is missing")
        try:
            data = self.zf.read(self.infos[name])
        except Exception as exc:  # bad CRC, truncated data, bad compression stream
            raise FormatError(f"{self.path}: member {name!r} is corrupt ({type(exc).__name__}: {exc})") from None
        if len(data) != self.infos[name].file_size:
            raise FormatError(f"{self.path}: member {name!r} holds {len(data)} bytes, its directory says "
                              f"{self.infos[name].file_size}")
        return data

    def json(self, name):
        try:
            value = json.loads(self.read(name).decode("utf-8"))
        except FormatError:
            raise
        except Exception as exc:
            raise FormatError(f"{self.path}: member {name!r} is not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise FormatError(f"{self.path}: member {name!r} must hold a JSON object")
        return value

    def arrays(self, name, expected=None, allowed_dtypes=_FLOAT_DTYPES):
        """``{key: array}`` from an npz member (see ``read_npz``)."""
        return read_npz(self.read(name), f"{self.path}: member {name!r}", expected, allowed_dtypes)


def read_npz(raw, what, expected=None, allowed_dtypes=_FLOAT_DTYPES):
    """``{key: array}`` from the bytes of an npz archive; each header is checked before its data is read.

    ``expected`` maps keys to shapes; a missing, extra or misshapen array is refused.
    """
    try:
        inner = zipfile.ZipFile(io.BytesIO(raw))
        infos = inner.infolist()
    except Exception as exc:
        raise FormatError(f"{what} is not an npz archive ({exc})") from None
    out = {}
    for info in infos:
        if not info.filename.endswith(".npy") or "/" in info.filename or ".." in info.filename:
            raise FormatError(f"{what}: unexpected entry {info.filename!r}")
        key = info.filename[:-4]
        if key in out:
            raise FormatError(f"{what}: array {key!r} appears twice")
        if info.file_size > MAX_ARRAY_BYTES or (
                info.file_size > (1 << 20) and info.file_size > MAX_RATIO * max(info.compress_size, 1)):
            raise FormatError(f"{what}: array {key!r} declares {info.file_size} bytes; refused")
        if expected is not None and key not in expected:
            raise FormatError(f"{what}: unexpected array {key!r} (expected {', '.join(expected)})")
        out[key] = _read_npy(inner, info, key, what, allowed_dtypes, None if expected is None else expected[key])
    if expected is not None:
        missing = [k for k in expected if k not in out]
        if missing:
            raise FormatError(f"{what}: missing arrays {', '.join(missing)}")
    return out


def _read_npy(inner, info, key, what, allowed_dtypes, shape):
    from numpy.lib import format as npformat

    try:
        with inner.open(info) as f:
            version = npformat.read_magic(f)
            if version == (1, 0):
                header = npformat.read_array_header_1_0(f)
            elif version == (2, 0):
                header = npformat.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            arr_shape, fortran, dtype = header
            if dtype.hasobject or dtype.str not in allowed_dtypes:
                raise FormatError(f"{what}: array {key!r} has dtype {dtype}, expected one of "
                                  f"{', '.join(sorted(allowed_dtypes))}")
            count = int(numpy.prod(arr_shape, dtype=numpy.float64))
            if count * dtype.itemsize > MAX_ARRAY_BYTES or any(int(s) < 0 for s in arr_shape):
                raise FormatError(f"{what}: array {key!r} declares an absurd shape {arr_shape}")
            if shape is not None and tuple(arr_shape) != tuple(shape):
                raise FormatError(f"{what}: array {key!r} has shape {tuple(arr_shape)}, the architecture "
                                  f"needs {tuple(shape)}")
            data = f.read(count * dtype.itemsize + 1)
            if len(data) != count * dtype.itemsize:
                raise FormatError(f"{what}: array {key!r} holds {len(data)} bytes of data, its header "
                                  f"says {count * dtype.itemsize}")
            arr = numpy.frombuffer(data, dtype=dtype, count=count)
            return arr.reshape(arr_shape, order="F" if fortran else "C").copy()
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{what}: array {key!r} is corrupt ({type(exc).__name__}: {exc})") from None


def _construct(what, cls, config):
    if not isinstance(config, dict):
        raise FormatError(f"{what}: config must be a JSON object")
    try:
        return cls(**config)
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{what}: cannot rebuild {cls.__name__} from its config ({type(exc).__name__}: {exc})") from None


def _lookup(what, find, name):
    """``find(name)`` from ``fastnn.registry``'s fixed tables; an unknown name is a FormatError."""
    try:
        return find(name)
    except (KeyError, TypeError) as exc:
        raise FormatError(f"{what}: {exc}") from None


def _optimizer_from_config(what, spec):
    from fastnn import registry

    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        raise FormatError(f"{what}: optimizer must be {{'class_name', 'config'}}")
    cls = _lookup(what, registry.optimizer_class, spec.get("class_name"))
    cfg = dict(spec["config"])
    lr = cfg.get("lr")
    if isinstance(lr, dict):
        lr = dict(lr)
        sched = _lookup(what, registry.schedule_class, lr.pop("class_name", None))
        cfg["lr"] = _construct(what, sched, lr)
    return _construct(what, cls, cfg)


def _build_model(reader, backend):
    from fastnn import registry
    from fastnn.losses import get as get_loss
    from fastnn.models import Sequential

    what = f"{reader.path}: member 'config.json'"
    meta = reader.json("metadata.json")
    if meta.get("format") != "fastnn" or not isinstance(meta.get("format_version"), int):
        raise FormatError(f"{reader.path}: member 'metadata.json' does not describe a fastnn file")
    if meta["format_version"] > FORMAT_VERSION:
        raise FormatError(f"{reader.path}: format version {meta['format_version']} is newer than this fastnn "
                          f"reads ({FORMAT_VERSION}); upgrade fastnn-engine")
    config = reader.json("config.json")
    if config.get("class_name") != "Sequential" or not isinstance(config.get("config"), dict):
        raise FormatError(f"{what}: expected a Sequential model")
    body = config["config"]
    if not isinstance(body.get("layers"), list) or not body["layers"]:
        raise FormatError(f"{what}: 'layers' must be a non-empty list")
    dtype = body.get("dtype")
    if dtype not in ("float32", "float64"):
        raise FormatError(f"{what}: dtype must be float32 or float64, got {dtype!r}")
    input_shape = body.get("input_shape")
    if not isinstance(input_shape, list) or not all(isinstance(s, int) and 0 < s < (1 << 31) for s in input_shape):
        raise FormatError(f"{what}: input_shape must be a list of positive integers, got {input_shape!r}")
    layers = []
    for i, spec in enumerate(body["layers"]):
        if not isinstance(spec, dict):
            raise FormatError(f"{what}: layer {i} must be an object")
        cls = _lookup(f"{what}: layer {i}", registry.layer_class, spec.get("class_name"))
        layers.append(_construct(f"{what}: layer {i}", cls, spec.get("config")))
    name = body.get("name") if isinstance(body.get("name"), str) else "sequential"
    model = Sequential(layers, dtype=dtype, name=name, backend=backend)
    try:
        model.build(tuple(input_shape))
    except Exception as exc:
        raise FormatError(f"{what}: the architecture does not build ({type(exc).__name__}: {exc})") from None
    compile_cfg = config.get("compile")
    if compile_cfg is not None:
        if not isinstance(compile_cfg, dict):
            raise FormatError(f"{what}: 'compile' must be an object or null")
        optimizer = _optimizer_from_config(what, compile_cfg.get("optimizer"))
        loss_spec = compile_cfg.get("loss")
        if not isinstance(loss_spec, dict):
            raise FormatError(f"{what}: 'loss' must be {{'class_name', 'config'}}")
        loss_cls = _lookup(what, registry.loss_class, loss_spec.get("class_name"))
        loss = _construct(what, loss_cls, loss_spec.get("config") or {})
        metrics = compile_cfg.get("metrics") or []
        if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
            raise FormatError(f"{what}: 'metrics' must be a list of names")
        try:
            model.compile(optimizer=optimizer, loss=get_loss(loss), metrics=metrics)
        except Exception as exc:
            raise FormatError(f"{what}: cannot compile ({type(exc).__name__}: {exc})") from None
    return model


def _weight_key(i, entry):
    """The key of a model's ``i``-th weight, ``000-W``: its position and name, not its layer's name, so
    weights load into any model of the same architecture (as Keras matches by order)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{i:03d}-{entry.name}")


def _expected_weights(model):
    return {_weight_key(i, e): e.shape for i, e in enumerate(model.flat.ordered_entries())}


def _weights_dict(model):
    return {_weight_key(i, e): w for i, (e, w) in enumerate(zip(model.flat.ordered_entries(), model.get_weights()))}


def _restore_weights(reader, model):
    _set_weights(model, reader.arrays("weights.npz", _expected_weights(model)))


def _set_weights(model, weights):
    model.set_weights([weights[k].astype(model.dtype, copy=False) for k in _expected_weights(model)])


def _restore_optimizer(reader, model):
    opt = model.optimizer
    if opt is None or not reader.has("optimizer.npz"):
        return
    expected = {"iterations": ()}
    expected.update({name: (model.flat.size,) for name in opt.slots})
    arrays = reader.arrays("optimizer.npz", expected, allowed_dtypes=_FLOAT_DTYPES | {"<i8"})
    if arrays["iterations"].dtype != numpy.int64 or int(arrays["iterations"]) < 0:
        raise FormatError(f"{reader.path}: member 'optimizer.npz': iterations must be a non-negative int64")
    opt.iterations = int(arrays["iterations"])
    if not opt.flat_slots or len(opt.flat_slots) != len(opt.slots) or any(
            s.shape != (model.flat.size,) or s.dtype != model.dtype for s in opt.flat_slots):
        opt.build(model.flat)  # else written in place: a captured training step keeps their addresses
    for slot, name in zip(opt.flat_slots, opt.slots):
        if arrays[name].dtype.kind != "f":
            raise FormatError(f"{reader.path}: member 'optimizer.npz': slot {name!r} must be floats")
        slot[...] = model.ops.asarray(arrays[name].astype(model.dtype, copy=False))


def load_model(path, backend=None, _with_training=False):
    """Rebuild a model saved with ``model.save(path)`` (on ``backend``, default the active one)."""
    try:
        reader = _Reader(path)
        model = _build_model(reader, backend)
        _restore_weights(reader, model)
        _restore_optimizer(reader, model)
        step = reader.json("metadata.json").get("step", 0)
        if not isinstance(step, int) or step < 0:
            raise FormatError(f"{reader.path}: member 'metadata.json': step must be a non-negative integer")
        model._step = step  # dropout masks continue where they were
        training = reader.json("training.json") if reader.has("training.json") else None
    except FormatError:
        raise
    except Exception as exc:  # anything unforeseen is still a format problem, never a crash
        raise FormatError(f"{os.fspath(path)}: cannot load ({type(exc).__name__}: {exc})") from None
    return (model, training) if _with_training else model


def save_weights(model, path):
    """The weights alone, as an ``.npz`` (keys ``NNN-name`` in layer order), written atomically."""
    if not model.built:
        raise ValueError(f"{model.name}: save_weights needs a built model")
    write_atomic(path, _npz_bytes(_weights_dict(model)))


def load_weights(model, path):
    """Load weights saved by ``save_weights`` into a built model with the same architecture."""
    model._require_built("load_weights()")
    path = os.fspath(path)
    try:
        if os.path.getsize(path) > MAX_TOTAL_BYTES:
            raise FormatError(f"{path}: the file is larger than {MAX_TOTAL_BYTES} bytes")
        with open(path, "rb") as f:
            raw = f.read()
        _set_weights(model, read_npz(raw, path, _expected_weights(model)))
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{os.fspath(path)}: cannot load weights ({type(exc).__name__}: {exc})") from None


def export_safetensors(model, path):
    """Write the weights as a safetensors file (needs the ``safetensors`` package)."""
    try:
        from safetensors.numpy import save
    except ImportError:
        raise ImportError('safetensors export needs the safetensors package: pip install "fastnn-engine[safetensors]"') from None
    write_atomic(path, save(_weights_dict(model), metadata={"format": "fastnn", "fastnn_version": __version__}))


def import_safetensors(model, path):
    """Load weights from a safetensors file written by ``export_safetensors`` (tensor names ``NNN-name``)."""
    try:
        from safetensors.numpy import load
    except ImportError:
        raise ImportError('safetensors import needs the safetensors package: pip install "fastnn-engine[safetensors]"') from None
    model._require_built("import_safetensors()")
    try:
        with open(os.fspath(path), "rb") as f:
            tensors = load(f.read())
    except Exception as exc:
        raise FormatError(f"{os.fspath(path)}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    expected = _expected_weights(model)
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if missing or extra:
        raise FormatError(f"{os.fspath(path)}: tensors do not match the model (missing {missing}, unexpected {extra})")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != tuple(shape) or tensors[key].dtype.kind != "f":
            raise FormatError(f"{os.fspath(path)}: tensor {key!r} has shape {tensors[key].shape} and dtype "
                              f"{tensors[key].dtype}; the model needs float {tuple(shape)}")
    _set_weights(model, tensors)


# ---------------------------------------------------------------- checkpoints
def write_checkpoint(model, path, training):
    """Write a checkpoint (model, optimizer state, loop state) atomically. Returns False, writing
    nothing, when a parameter is not finite: the last good checkpoint stays in place."""
    p = model.flat.p
    if not bool(model.ops.xp.isfinite(p).all()):
        return False
    write_atomic(path, model_zip_bytes(model, include_optimizer=True, training=training))
    return True


def read_training_state(path):
    """The loop state of a checkpoint (its ``training.json``), without touching any model."""
    try:
        return _Reader(path).json("training.json")
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{os.fspath(path)}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from None


def restore_checkpoint(model, path):
    """Load a checkpoint written by ``write_checkpoint`` into ``model`` (same architecture and
    optimizer) and return its loop state."""
    path = os.fspath(path)
    try:
        reader = _Reader(path)
        config = reader.json("config.json")
        saved = [spec.get("class_name") for spec in config.get("config", {}).get("layers", [])]
        mine = [type(layer).__name__ for layer in model.layers]
        if saved != mine:
            raise FormatError(f"{path}: member 'config.json': the checkpoint's layers {saved} differ from the "
                              f"model's {mine}")
        opt_spec = (config.get("compile") or {}).get("optimizer") or {}
        if model.optimizer is not None and opt_spec.get("class_name") != type(model.optimizer).__name__:
            raise FormatError(f"{path}: member 'config.json': the checkpoint's optimizer "
                              f"{opt_spec.get('class_name')!r} differs from the model's {type(model.optimizer).__name__!r}")
        _restore_weights(reader, model)
        _restore_optimizer(reader, model)
        for layer, spec in zip(model.layers, config["config"]["layers"]):
            seed = (spec.get("config") or {}).get("seed")
            if hasattr(layer, "seed") and isinstance(seed, int):  # dropout masks continue as they were
                layer.seed = seed
        training = reader.json("training.json")
        if isinstance(opt_spec.get("config", {}).get("lr"), (int, float)):
            model.optimizer.lr = float(opt_spec["config"]["lr"])  # a callback may have changed it
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{path}: cannot restore the checkpoint ({type(exc).__name__}: {exc})") from None
    for key in ("epoch", "batch", "count", "model_step"):
        if not isinstance(training.get(key), int) or training[key] < 0:
            raise FormatError(f"{path}: member 'training.json': {key} must be a non-negative integer")
    model._step = training["model_step"]
    return training
