"""Models to files and back: ``model.save``/``fastnn.load_model`` (a ``.fastnn`` zip), ``save_weights``/
``load_weights`` (``.npz``) and safetensors, on top of ``fastnn.io``'s file layer.

Writing takes the model's ``get_config`` of every layer, its compile settings and ``model.state()``
(weights, optimizer slots and step count, dropout step). Reading never executes anything from a
file: class names map through ``fastnn.registry``'s fixed tables, and sizes are judged before
anything is allocated: the config gives every array's shape (a dry pass over throwaway layers that
allocates nothing), the zip directory's sizes must fit them, and only then is the model built
(without initializers) and are the arrays decompressed and handed to ``model.load_state``. Every
failure raises ``fastnn.FormatError`` naming the file, the member and what is wrong.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import warnings
import zipfile

import numpy

from fastnn import registry
from fastnn._version import __version__
from fastnn.errors import FormatError
from fastnn.layers.base import weights_without_initializers
from fastnn.losses import CustomLoss
from fastnn.losses import get as get_loss
from fastnn.io import (ARRAY_OVERHEAD, FLOAT_DTYPES, FORMAT_VERSION, MAX_TOTAL_BYTES, _Reader, npz_bytes,
                       read_npz, read_regular, write_atomic)

__all__ = ["save_model", "load_model", "save_weights", "load_weights", "export_safetensors", "import_safetensors",
           "model_config", "model_zip_bytes"]


def _input_shape(model):
    shape = model.input_shape or (model.layers[0].input_shape if model.layers else None)
    return list(shape) if shape else None


def model_config(model):
    layers = []
    for layer in model.layers:
        try:
            cfg = layer.get_config()
        except TypeError as exc:
            raise TypeError(f"{model.name}: cannot save layer {layer.name}: {exc}") from None
        layers.append({"class_name": type(layer).__name__, "config": cfg})
    config = {"class_name": "Sequential", "config": {
        "name": model.name, "dtype": str(model.dtype), "layers": layers,
        "input_shape": _input_shape(model)}}
    graph = getattr(model, "graph_config", None)
    if graph is not None:  # a functional (or traced subclassed) model: its graph, loadable without its class
        config["class_name"] = "Model"
        config["config"]["graph"] = graph()
    compile_cfg = None
    if model.optimizer is not None and model.loss is not None and not isinstance(model.loss, CustomLoss):
        compile_cfg = {
            "optimizer": {"class_name": type(model.optimizer).__name__, "config": model.optimizer.get_config()},
            "loss": {"class_name": model.loss.name,
                     "config": {k: v for k, v in model.loss.get_config().items() if k != "name"}},
            "metrics": [spec for spec in (metric_config(model, m) for m in model.metrics) if spec is not None],
        }
    config["compile"] = compile_cfg
    return config


def metric_config(model, metric):
    """A compiled metric as a file records it: its name for one compiled by name (``"accuracy"``),
    ``{"class_name", "config"}`` for a ``fastnn.metrics`` object (so its settings and its name load
    back), or None, with a warning, for a metric no file can rebuild (a user's function or class)."""
    from fastnn import metrics as _metrics

    cls = type(metric)
    if cls is _metrics.Metric and metric.name in _metrics.METRIC_NAMES:
        return metric.name
    try:
        if registry.metric_class(cls.__name__) is cls:
            return {"class_name": cls.__name__, "config": metric.get_config()}
    except KeyError:
        pass
    warnings.warn(f"{model.name}: metric {metric.name!r} ({cls.__name__}) is not a fastnn.metrics metric and is "
                  f"not saved; compile the loaded model again to use it", RuntimeWarning, stacklevel=4)
    return None


def optimizer_arrays(state):
    """``optimizer.npz``'s arrays from ``model.state()["optimizer"]`` (empty without an optimizer)."""
    opt = state["optimizer"]
    if opt is None:
        return {}
    return {"iterations": numpy.array(opt["iterations"], dtype=numpy.int64), **opt["slots"]}


def model_zip_bytes(model, include_optimizer=True, training=None, state=None) -> bytes:
    """The bytes of a ``.fastnn`` zip for ``model`` (and a checkpoint's ``training`` state);
    ``state``: ``model.state()`` when the caller has it already."""
    if not model.built:
        raise ValueError(f"{model.name}: save needs a built model")
    config = model_config(model)
    state = model.state() if state is None else state
    metadata = {"format": "fastnn", "format_version": FORMAT_VERSION, "fastnn_version": __version__,
                "backend": model.ops.name, "dtype": str(model.dtype), "step": int(state["step"])}
    weights = dict(zip(weight_keys(model), state["weights"]))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", json.dumps(config, indent=1))
        zf.writestr("metadata.json", json.dumps(metadata, indent=1))
        zf.writestr("weights.npz", npz_bytes(weights))
        if include_optimizer and state["optimizer"] is not None:
            zf.writestr("optimizer.npz", npz_bytes(optimizer_arrays(state)))
        if training is not None:
            zf.writestr("training.json", json.dumps(training))
    return buf.getvalue()


def save_model(model, path, include_optimizer=True):
    """Write ``model`` (architecture, compile settings, weights, optimizer state) to ``path`` atomically."""
    write_atomic(path, model_zip_bytes(model, include_optimizer))



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
        raise FormatError(f"{what}: {exc.args[0] if exc.args else exc}") from None


def _optimizer_from_config(what, spec):
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


def architecture(reader):
    """The checked metadata and ``config.json`` body of a file: ``(config, dtype, input_shape, specs)``."""
    what = f"{reader.path}: member 'config.json'"
    meta = reader.json("metadata.json")
    if meta.get("format") != "fastnn" or not isinstance(meta.get("format_version"), int):
        raise FormatError(f"{reader.path}: member 'metadata.json' does not describe a fastnn file")
    if meta["format_version"] < 1:
        raise FormatError(f"{reader.path}: member 'metadata.json': format_version must be a positive integer, got "
                          f"{meta['format_version']}")
    if meta["format_version"] > FORMAT_VERSION:
        raise FormatError(f"{reader.path}: format version {meta['format_version']} is newer than this fastnn "
                          f"reads ({FORMAT_VERSION}); upgrade fastnn-engine")
    config = reader.json("config.json")
    if config.get("class_name") not in ("Sequential", "Model") or not isinstance(config.get("config"), dict):
        raise FormatError(f"{what}: expected a Sequential or functional Model")
    body = config["config"]
    if not isinstance(body.get("layers"), list) or not body["layers"]:
        raise FormatError(f"{what}: 'layers' must be a non-empty list")
    dtype = body.get("dtype")
    if dtype not in ("float32", "float64"):
        raise FormatError(f"{what}: dtype must be float32 or float64, got {dtype!r}")
    input_shape = body.get("input_shape")
    if not isinstance(input_shape, list) or not input_shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 < s < (1 << 31) for s in input_shape):
        raise FormatError(f"{what}: input_shape must be a list of positive integers, got {input_shape!r}")
    for i, spec in enumerate(body["layers"]):
        if not isinstance(spec, dict):
            raise FormatError(f"{what}: layer {i} must be an object")
    return config, dtype, tuple(input_shape), body["layers"]


def _make_layers(what, specs):
    layers = []
    for i, spec in enumerate(specs):
        cls = _lookup(f"{what}: layer {i}", registry.layer_class, spec.get("class_name"))
        layers.append(_construct(f"{what}: layer {i}", cls, spec.get("config")))
    return layers


def _assemble(what, body, layers, **kwargs):
    """The (unbuilt) model ``body`` describes over ``layers``: a ``Sequential``, or a functional
    ``Model`` when ``body`` has a graph. A bad graph raises ``FormatError``."""
    graph = body.get("graph")
    if graph is None:
        return registry.model_class("Sequential")(layers, **kwargs)
    try:
        return registry.model_class("Model").from_graph(layers, graph, **kwargs)
    except (ValueError, TypeError) as exc:
        raise FormatError(f"{what}: the graph does not connect: {exc}") from None


def _weight_shapes(reader, dtype, input_shape, specs, body):
    """``{key: shape}`` of every weight the config's architecture makes, in ``get_weights`` order,
    from a dry pass that allocates nothing: throwaway layers whose ``add_weight`` only records
    shapes (zero-memory placeholders), and no random draws from any shared generator."""
    what = f"{reader.path}: member 'config.json'"
    layers = _make_layers(what, specs)

    def dry_build(layer, shape):
        layer.dtype = numpy.dtype(dtype)
        layer.rng = numpy.random.default_rng(0)
        layer.build(shape)

    try:
        with weights_without_initializers("shapes"):
            model = _assemble(what, body, layers, dtype=dtype, seed=0)  # a throwaway: no draw from any generator
            model.input_shape = input_shape
            model.layer_shapes(dry_build)
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{what}: the architecture does not build ({type(exc).__name__}: {exc})") from None
    names = [name for layer in layers for name in layer.weight_info()]
    shapes = [tuple(int(d) for d in getattr(layer, name).shape) for layer in layers for name in layer.weight_info()]
    return {re.sub(r"[^A-Za-z0-9_.-]", "_", f"{i:03d}-{name}"): s for i, (name, s) in enumerate(zip(names, shapes))}


def _optimizer_spec(reader, config):
    compile_cfg = config.get("compile")
    if compile_cfg is None:
        return None
    if not isinstance(compile_cfg, dict):
        raise FormatError(f"{reader.path}: member 'config.json': 'compile' must be an object or null")
    return _optimizer_from_config(f"{reader.path}: member 'config.json'", compile_cfg.get("optimizer"))


def _bound_members(reader, weight_shapes, optimizer):
    """Judge ``weights.npz`` and ``optimizer.npz`` against the bytes the architecture implies."""
    reader.expect("weights.npz", weight_shapes.values(), "the architecture's weights")
    if reader.has("optimizer.npz") and optimizer is not None:  # without one (a custom loss) it is never read
        size = sum(math.prod(s) for s in weight_shapes.values())
        reader.expect("optimizer.npz", [()] + [(size,)] * len(optimizer.slots),
                      f"{type(optimizer).__name__}'s step count and {len(optimizer.slots)} slot(s)")


def _build_model(reader, backend, config, dtype, input_shape, specs, optimizer):
    """The model the config describes, built without running initializers (the file's arrays
    replace every weight)."""
    what = f"{reader.path}: member 'config.json'"
    body = config["config"]
    layers = _make_layers(what, specs)
    name = body.get("name") if isinstance(body.get("name"), str) else "sequential"
    model = _assemble(what, body, layers, dtype=dtype, name=name, backend=backend)
    try:
        with weights_without_initializers("empty"):
            model.build(input_shape)
    except Exception as exc:
        raise FormatError(f"{what}: the architecture does not build ({type(exc).__name__}: {exc})") from None
    compile_cfg = config.get("compile")
    if compile_cfg is not None:
        loss_spec = compile_cfg.get("loss")
        if not isinstance(loss_spec, dict):
            raise FormatError(f"{what}: 'loss' must be {{'class_name', 'config'}}")
        loss_cls = _lookup(what, registry.loss_class, loss_spec.get("class_name"))
        loss = _construct(what, loss_cls, loss_spec.get("config") or {})
        metrics = _metrics_from_config(what, compile_cfg.get("metrics") or [])
        try:
            model.compile(optimizer=optimizer, loss=get_loss(loss), metrics=metrics)
        except Exception as exc:
            raise FormatError(f"{what}: cannot compile ({type(exc).__name__}: {exc})") from None
    return model


def _metrics_from_config(what, specs):
    """The metrics a file's ``compile`` lists: names, and ``{"class_name", "config"}`` of
    ``fastnn.metrics`` classes (looked up in a fixed table, never imported)."""
    if not isinstance(specs, list):
        raise FormatError(f"{what}: 'metrics' must be a list, got {type(specs).__name__}")
    metrics = []
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            metrics.append(spec)
        elif isinstance(spec, dict) and isinstance(spec.get("config"), dict):
            cls = _lookup(f"{what}: metric {i}", registry.metric_class, spec.get("class_name"))
            metrics.append(_construct(f"{what}: metric {i}", cls, spec["config"]))
        else:
            raise FormatError(f"{what}: metric {i} must be a name or {{'class_name', 'config'}}, got "
                              f"{str(spec)[:80]!r}")
    return metrics


def model_from_config(spec, cls):
    """A model of class ``cls`` from ``{"class_name", "config"}`` (``get_config``/``to_json``'s form):
    layers by class name through ``fastnn.registry`` (nothing imported or executed), built when the
    config has an input shape, with fresh weights. A bad config raises ``ValueError`` naming what."""
    what = "from_config"
    if not isinstance(spec, dict) or spec.get("class_name") not in (cls.__name__, "Sequential", "Model") or \
            not isinstance(spec.get("config"), dict):
        raise ValueError(f"{what}: expected {{'class_name': {cls.__name__!r}, 'config': {{...}}}}, got "
                         f"{str(spec)[:80]!r}")
    body = spec["config"]
    if not isinstance(body.get("layers"), list) or not all(isinstance(x, dict) for x in body["layers"]):
        raise ValueError(f"{what}: config['layers'] must be a list of {{'class_name', 'config'}}")
    try:
        layers = _make_layers(what, body["layers"])
    except FormatError as exc:
        raise ValueError(str(exc)) from None
    try:
        model = _assemble(what, body, layers, dtype=body.get("dtype", "float32"), name=body.get("name"))
    except FormatError as exc:
        raise ValueError(str(exc)) from None
    if body.get("input_shape"):
        model.build(tuple(body["input_shape"]))
    return model


def _weight_key(i, name):
    """The key of a model's ``i``-th weight, ``000-W``: its position and name, not its layer's name, so
    weights load into any model of the same architecture (as Keras matches by order)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{i:03d}-{name}")


def weight_keys(model):
    """The file keys of ``model.get_weights()``, in that order."""
    return [_weight_key(i, name) for i, (name, _) in enumerate(model.weight_shapes())]


def expected_weights(model):
    """``{key: shape}`` of every weight of a built model, in ``get_weights`` order."""
    return {_weight_key(i, name): shape for i, (name, shape) in enumerate(model.weight_shapes())}


def _weights_dict(model):
    return dict(zip(weight_keys(model), model.get_weights()))


def _set_weights(model, weights):
    model.set_weights([weights[k].astype(model.dtype, copy=False) for k in expected_weights(model)])


def read_optimizer(reader, model, optimizer):
    """``{"iterations", "slots": {name: array}}`` read and checked, or None; nothing is written to
    the model (``model.load_state`` takes it)."""
    if optimizer is None or not reader.has("optimizer.npz"):
        return None
    expected = {"iterations": ()}
    expected.update({name: (model.count_params(),) for name in optimizer.slots})
    arrays = reader.arrays("optimizer.npz", expected, allowed_dtypes=FLOAT_DTYPES | {"<i8"})
    if arrays["iterations"].dtype != numpy.int64 or int(arrays["iterations"]) < 0:
        raise FormatError(f"{reader.path}: member 'optimizer.npz': iterations must be a non-negative int64")
    for name in optimizer.slots:
        if arrays[name].dtype.kind != "f":
            raise FormatError(f"{reader.path}: member 'optimizer.npz': slot {name!r} must be floats")
    return {"iterations": int(arrays["iterations"]), "slots": {name: arrays[name] for name in optimizer.slots}}


def metadata_step(reader):
    step = reader.json("metadata.json").get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise FormatError(f"{reader.path}: member 'metadata.json': step must be a non-negative integer")
    return step


def load_model(path, backend=None, _with_training=False):
    """Rebuild a model saved with ``model.save(path)`` (on ``backend``, default the active one).

    Sizes are judged before anything is allocated: the config gives every array's shape (a dry
    pass), the zip directory's sizes must fit them, and only then is the model built (without
    initializers) and are the arrays decompressed."""
    try:
        reader = _Reader(path)
        config, dtype, input_shape, specs = architecture(reader)
        shapes = _weight_shapes(reader, dtype, input_shape, specs, config["config"])
        optimizer = _optimizer_spec(reader, config)
        _bound_members(reader, shapes, optimizer)
        step = metadata_step(reader)
        training = reader.json("training.json") if reader.has("training.json") else None
        model = _build_model(reader, backend, config, dtype, input_shape, specs, optimizer)
        weights = reader.arrays("weights.npz", expected_weights(model))
        opt_state = read_optimizer(reader, model, model.optimizer)
        model.load_state({"weights": [weights[k] for k in expected_weights(model)], "optimizer": opt_state,
                          "step": step})  # dropout masks continue where they were
    except FormatError:
        raise
    except Exception as exc:  # anything unforeseen is still a format problem, never a crash
        raise FormatError(f"{os.fspath(path)}: cannot load ({type(exc).__name__}: {exc})") from None
    return (model, training) if _with_training else model


def save_weights(model, path):
    """The weights alone, as an ``.npz`` (keys ``NNN-name`` in layer order), written atomically."""
    model.build()  # a no-op once built; otherwise builds from the first layer's input_shape, or says why not
    write_atomic(path, npz_bytes(_weights_dict(model)))


def load_weights(model, path):
    """Load weights saved by ``save_weights`` into a built model with the same architecture. The
    file must be a regular file no larger than the model's weights imply."""
    model.build()
    path = os.fspath(path)
    expected = expected_weights(model)
    limit = sum(8 * math.prod(s) + 2 * ARRAY_OVERHEAD for s in expected.values()) + ARRAY_OVERHEAD
    try:
        raw = read_regular(path, min(limit, MAX_TOTAL_BYTES))
        _set_weights(model, read_npz(raw, path, expected))
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
    model.build()
    try:
        tensors = load(read_regular(path, MAX_TOTAL_BYTES))
    except Exception as exc:
        raise FormatError(f"{os.fspath(path)}: not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    expected = expected_weights(model)
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if missing or extra:
        raise FormatError(f"{os.fspath(path)}: tensors do not match the model (missing {missing}, unexpected {extra})")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != tuple(shape) or tensors[key].dtype.kind != "f":
            raise FormatError(f"{os.fspath(path)}: tensor {key!r} has shape {tensors[key].shape} and dtype "
                              f"{tensors[key].dtype}; the model needs float {tuple(shape)}")
    _set_weights(model, tensors)
