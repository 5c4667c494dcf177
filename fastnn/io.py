"""Saving and loading models safely, and atomic file writes.

A ``.fastnn`` file is a zip of ``config.json`` (architecture and compile settings),
``metadata.json`` (format version, fastnn version, backend, dtype), ``weights.npz`` and, when
saved, ``optimizer.npz`` (slots and step count) and ``training.json`` (a checkpoint's loop state).

Loading never executes anything from a file: class names map through ``fastnn.registry``'s fixed
tables, arrays are read with ``allow_pickle=False``, member names and sizes are checked from the
zip directory before anything is decompressed, every array header (dtype, shape) is checked before
its data is read, and the weights must match the architecture. Every failure raises
``fastnn.FormatError`` naming the file, the member and what is wrong.

Bounds: only regular files are opened (a FIFO or a device such as ``/dev/zero`` is refused by
name), and at most their ``st_size`` bytes are read. The JSON members are read first (16 MiB at
most each); from ``config.json`` a dry pass over the layers, which allocates nothing, gives the
shape of every weight and optimizer slot, so the bytes ``weights.npz`` and ``optimizer.npz`` may
expand to are known before any array is decompressed or the architecture is built: a member that
declares more (a zip bomb) or less (a tiny file claiming a huge layer) is refused. No ratio is
judged, so all-zero optimizer slots (a model saved before training, a large frozen part), which
compress a thousandfold, load. The model is then built without running initializers.

Writes are atomic: a temporary file ``.fastnn-tmp-<host>-<pid>-*`` in the target's directory,
``fsync``, ``os.replace``, and an ``fsync`` of the directory, so a crash leaves either the old file
or the new one. The file gets the permissions ``open()`` would give it (an existing target's mode,
else ``0o666`` less the umask). A temporary whose writer is provably dead (its process on this host
is gone), left by a SIGKILL, is removed by the next write into that folder.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import socket
import stat
import tempfile
import threading
import time
import warnings
import zipfile

import numpy

from fastnn._version import __version__
from fastnn.errors import CheckpointMismatchError, FolderInUseError, FormatError

FORMAT_VERSION = 1
MEMBERS = ("config.json", "metadata.json", "weights.npz", "optimizer.npz", "training.json")
MAX_JSON_BYTES = 16 << 20
MAX_ARRAY_BYTES = 8 << 30
MAX_TOTAL_BYTES = 16 << 30
ARRAY_OVERHEAD = 16 << 10  # per array in an npz: its .npy header (numpy caps it at 10000) and zip headers
TMP_PREFIX = ".fastnn-tmp-"
LOCK_NAME = ".fastnn-lock"
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


def _host_token():
    """Who may judge a writer's PID: this boot of this machine and PID namespace (a container with
    another PID namespace, or another machine with the same host name sharing the folder, has
    another token, so its temporaries are never judged by PID). The namespace inode alone is the
    same on every Linux host's initial namespace: the boot id tells machines apart."""
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        ns = 0
    boot = ""
    for path in ("/proc/sys/kernel/random/boot_id", "/etc/machine-id"):
        try:
            with open(path, encoding="ascii") as f:
                boot = f.read().strip()
            break
        except OSError:
            continue
    return hashlib.sha1(f"{socket.gethostname()}:{boot}:{ns}".encode()).hexdigest()[:8]


_HOST = _host_token()
_TMP_RE = re.compile(re.escape(TMP_PREFIX) + r"([0-9a-f]{8})-([0-9]+)-")


def _pid_alive(pid):
    if pid <= 0:
        return True  # nothing to prove
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists (another user's) or cannot tell: alive
    return True


def _umask():
    """The process's umask, read without changing it where Linux tells (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the only portable way (briefly set, then restored)
    os.umask(mask)
    return mask


def _file_mode(path):
    """The mode ``open(path, "wb")`` would leave: an existing file's own, else 0o666 less the umask."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return 0o666 & ~_umask()


def write_atomic(path, data: bytes):
    """Write ``data`` to ``path`` atomically (temporary file, fsync, replace, fsync of the directory).

    The file gets the mode ``open()`` would give it; temporaries of dead writers in the folder (a
    SIGKILL mid-save) are removed first."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    clean_stale_temporaries(folder)
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{_HOST}-{os.getpid()}-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)  # mkstemp makes 0600 whatever the umask
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


def temporary_is_stale(folder, name, locked_since=None):
    """Whether the temporary ``name`` in ``folder`` provably belongs to no live writer: its name says
    it was written on this host (and PID namespace) by a process that no longer exists; or, for one
    whose writer cannot be judged (another host, an older fastnn's name), ``locked_since`` (when the
    caller took the folder's lock, which every checkpoint writer of the folder takes) is given and
    the file was last written before it."""
    m = _TMP_RE.match(name)
    if m and m.group(1) == _HOST:
        pid = int(m.group(2))
        return pid != os.getpid() and not _pid_alive(pid)
    if locked_since is None:
        return False
    try:
        return os.stat(os.path.join(folder, name)).st_mtime < locked_since
    except OSError:
        return False


def clean_stale_temporaries(folder, locked_since=None):
    """Remove the ``.fastnn-tmp-*`` files in ``folder`` that ``temporary_is_stale`` proves were left
    by crashed writers; a live writer's are left alone. Returns how many were removed."""
    try:
        names = [n for n in os.listdir(folder) if n.startswith(TMP_PREFIX)]
    except OSError:
        return 0
    removed = 0
    for name in names:
        if temporary_is_stale(folder, name, locked_since):
            try:
                os.unlink(os.path.join(folder, name))
                removed += 1
            except OSError:
                pass
    return removed


# ---------------------------------------------------------------- the folder lock
try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

_held = {}  # realpath of a folder -> the FolderLock this process holds on it
_held_guard = threading.Lock()


class FolderLock:
    """An advisory lock on a checkpoint folder: ``flock`` on ``<folder>/.fastnn-lock``, which records
    the holder's PID, host and start time. The kernel drops it when the holder dies (even by
    SIGKILL), so a crashed run never leaves the folder locked. A second run asking for it gets
    ``FolderInUseError`` naming the holder. Within one process, a lock left held by an earlier
    ``fit`` of the same thread (one that raised) passes to the new one; another live thread's is
    refused. Where ``fcntl`` is missing (Windows) no lock is taken: a warning says so, and two runs
    must not share a folder there."""

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        self.fd = None
        self.since = None
        self.thread = None

    def acquire(self):
        if self.fd is not None:
            return self
        os.makedirs(self.folder, exist_ok=True)
        key = os.path.realpath(self.folder)
        with _held_guard:
            other = _held.get(key)
            if other is not None and other is not self:
                if other.thread is not threading.current_thread() and other.thread.is_alive():
                    raise FolderInUseError(
                        f"{self.folder}: checkpoint folder in use by PID {os.getpid()} (this process, thread "
                        f"{other.thread.name!r}); wait for that fit to finish or give this one another folder")
                other._drop()  # left behind by a fit of this thread that raised, or by a finished thread
            if fcntl is None:
                warnings.warn(f"{self.folder}: this platform has no fcntl, so the checkpoint folder is not "
                              f"locked; do not let two runs share it", RuntimeWarning, stacklevel=3)
                fd = -1
            else:
                path = os.path.join(self.folder, LOCK_NAME)
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
                except PermissionError:  # a read-only folder or lock file: flock works on a read-only fd
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise FolderInUseError(
                        f"{self.folder}: checkpoint folder in use by {holder}; two runs cannot share a "
                        f"checkpoint folder: wait for that run to finish, stop it, or give this run another "
                        f"checkpoint_dir") from None
                record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, record.encode(), 0)
                except OSError:
                    pass  # opened read-only: locked all the same, the holder just is not named
            self.fd, self.since, self.thread = fd, time.time(), threading.current_thread()
            _held[key] = self
        return self

    def _drop(self):
        fd, self.fd = self.fd, None
        if fd is not None and fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def release(self):
        if self.fd is None:
            return
        with _held_guard:
            key = os.path.realpath(self.folder)
            if _held.get(key) is self:
                del _held[key]
            self._drop()

    @property
    def held(self):
        return self.fd is not None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd):
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        pid = int(info["pid"])
        host = info.get("host")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        where = "" if host == socket.gethostname() else f" on host {host}"
        return f"PID {pid}{where} (since {since})"
    except Exception:
        return "another process (its PID is not recorded yet)"


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
            "loss": {"class_name": model.loss.name,
                     "config": {k: v for k, v in model.loss.get_config().items() if k != "name"}},
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
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_regular(path, limit=MAX_TOTAL_BYTES):
    """The bytes of the regular file ``path``: at most its ``st_size`` (never more than ``limit``).

    A FIFO, a device (``/dev/zero``), a socket or a directory is refused by name before anything is
    read (it is opened non-blocking, so a FIFO without a writer cannot hang the call)."""
    path = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
            raise FormatError(f"{path}: is {kind}, not a regular file; fastnn loads only regular files")
        if st.st_size > limit:
            raise FormatError(f"{path}: the file is {st.st_size} bytes, more than the {limit} allowed")
        chunks, left = [], st.st_size
        try:
            while left > 0:
                chunk = f.read(left)
                if not chunk:
                    break  # shrank while being read: the zip checks catch what is missing
                chunks.append(chunk)
                left -= len(chunk)
        except OSError as exc:
            raise FormatError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Reader:
    """Checks a zip's directory, then reads members on demand, raising FormatError for anything odd.

    The JSON members are bounded by ``MAX_JSON_BYTES``; an array member can be read only after
    ``expect`` has bounded it by the bytes the architecture implies."""

    def __init__(self, path, allowed=MEMBERS):
        self.path = os.fspath(path)
        self.data = read_regular(self.path, MAX_TOTAL_BYTES)
        try:
            self.zf = zipfile.ZipFile(io.BytesIO(self.data))
            infos = self.zf.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
            raise FormatError(f"{self.path}: not a fastnn file (not a readable zip: {exc})") from None
        self.infos = {}
        self.bounded = set()
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
            total += info.file_size
            self.infos[name] = info
        if total > MAX_TOTAL_BYTES:
            raise FormatError(f"{self.path}: members declare {total} bytes in all, more than {MAX_TOTAL_BYTES}")

    def has(self, name):
        return name in self.infos

    def expect(self, name, shapes, what):
        """Bound the npz member ``name`` by the arrays ``shapes`` (an iterable of shapes) must take:
        4 to 8 bytes per element plus each array's headers. Called before anything is decompressed
        or allocated; a member declaring more (a zip bomb) or less (too little data for the
        architecture) is refused."""
        if name not in self.infos:
            return
        shapes = list(shapes)
        counts = [math.prod(int(d) for d in shape) for shape in shapes]
        low = 4 * sum(counts)
        high = 8 * sum(counts) + ARRAY_OVERHEAD * (len(counts) + 1)
        size = self.infos[name].file_size
        if size > high:
            raise FormatError(f"{self.path}: member {name!r} declares {size} bytes, but {what} "
                              f"({sum(counts)} numbers) take at most {high}; refused")
        if size < low:
            raise FormatError(f"{self.path}: member {name!r} declares {size} bytes, too few for {what} "
                              f"({sum(counts)} numbers, at least {low} bytes)")
        self.bounded.add(name)

    def read(self, name):
        if name not in self.infos:
            raise FormatError(f"{self.path}: member {name!r} is missing")
        if not name.endswith(".json") and name not in self.bounded:
            raise RuntimeError(f"fastnn.io: {name!r} read before its size was bounded")  # a bug, not a file problem
        try:
            data = self.zf.read(self.infos[name])  # zipfile stops at the declared size
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

    ``expected`` maps keys to shapes; a missing, extra or misshapen array is refused, and an entry
    declaring more bytes than its shape takes (at 8 bytes a number, plus headers) is refused
    before it is decompressed.
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
        if expected is not None and key not in expected:
            raise FormatError(f"{what}: unexpected array {key!r} (expected {', '.join(expected)})")
        limit = MAX_ARRAY_BYTES if expected is None else 8 * math.prod(int(d) for d in expected[key]) + ARRAY_OVERHEAD
        if info.file_size > limit:
            raise FormatError(f"{what}: array {key!r} declares {info.file_size} bytes, more than the {limit} its "
                              f"shape allows; refused")
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


def _architecture(reader):
    """The checked metadata and ``config.json`` body of a file: ``(config, dtype, input_shape, specs)``."""
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
    if not isinstance(input_shape, list) or not input_shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 < s < (1 << 31) for s in input_shape):
        raise FormatError(f"{what}: input_shape must be a list of positive integers, got {input_shape!r}")
    for i, spec in enumerate(body["layers"]):
        if not isinstance(spec, dict):
            raise FormatError(f"{what}: layer {i} must be an object")
    return config, dtype, tuple(input_shape), body["layers"]


def _make_layers(what, specs):
    from fastnn import registry

    layers = []
    for i, spec in enumerate(specs):
        cls = _lookup(f"{what}: layer {i}", registry.layer_class, spec.get("class_name"))
        layers.append(_construct(f"{what}: layer {i}", cls, spec.get("config")))
    return layers


def _weight_shapes(reader, dtype, input_shape, specs):
    """``{key: shape}`` of every weight the config's architecture makes, in ``get_weights`` order,
    from a dry pass that allocates nothing: throwaway layers whose ``add_weight`` only records
    shapes (zero-memory placeholders), and no random draws from any shared generator."""
    from fastnn.layers.base import weights_without_initializers

    what = f"{reader.path}: member 'config.json'"
    layers = _make_layers(what, specs)
    shape = (None,) + input_shape
    try:
        with weights_without_initializers("shapes"):
            for layer in layers:
                layer.dtype = numpy.dtype(dtype)
                layer.rng = numpy.random.default_rng(0)
                layer.build(shape)
                shape = layer.compute_output_shape(shape)
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
    from fastnn import registry
    from fastnn.layers.base import weights_without_initializers
    from fastnn.losses import get as get_loss
    from fastnn.models import Sequential

    what = f"{reader.path}: member 'config.json'"
    body = config["config"]
    layers = _make_layers(what, specs)
    name = body.get("name") if isinstance(body.get("name"), str) else "sequential"
    model = Sequential(layers, dtype=dtype, name=name, backend=backend)
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


def _set_weights(model, weights):
    model.set_weights([weights[k].astype(model.dtype, copy=False) for k in _expected_weights(model)])


def _read_optimizer(reader, model, optimizer):
    """``(iterations, {slot: array})`` read and checked, or None; nothing is written to the model."""
    if optimizer is None or not reader.has("optimizer.npz"):
        return None
    expected = {"iterations": ()}
    expected.update({name: (model.flat.size,) for name in optimizer.slots})
    arrays = reader.arrays("optimizer.npz", expected, allowed_dtypes=_FLOAT_DTYPES | {"<i8"})
    if arrays["iterations"].dtype != numpy.int64 or int(arrays["iterations"]) < 0:
        raise FormatError(f"{reader.path}: member 'optimizer.npz': iterations must be a non-negative int64")
    for name in optimizer.slots:
        if arrays[name].dtype.kind != "f":
            raise FormatError(f"{reader.path}: member 'optimizer.npz': slot {name!r} must be floats")
    return int(arrays["iterations"]), {name: arrays[name] for name in optimizer.slots}


def _apply_optimizer(model, state):
    if state is None:
        return
    opt = model.optimizer
    opt.iterations, arrays = state
    if not opt.flat_slots or len(opt.flat_slots) != len(opt.slots) or any(
            s.shape != (model.flat.size,) or s.dtype != model.dtype for s in opt.flat_slots):
        opt.build(model.flat)  # else written in place: a captured training step keeps their addresses
    for slot, name in zip(opt.flat_slots, opt.slots):
        slot[...] = model.ops.asarray(arrays[name].astype(model.dtype, copy=False))


def _metadata_step(reader):
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
        config, dtype, input_shape, specs = _architecture(reader)
        shapes = _weight_shapes(reader, dtype, input_shape, specs)
        optimizer = _optimizer_spec(reader, config)
        _bound_members(reader, shapes, optimizer)
        step = _metadata_step(reader)
        training = reader.json("training.json") if reader.has("training.json") else None
        model = _build_model(reader, backend, config, dtype, input_shape, specs, optimizer)
        weights = reader.arrays("weights.npz", _expected_weights(model))
        opt_state = _read_optimizer(reader, model, model.optimizer)
        _set_weights(model, weights)
        _apply_optimizer(model, opt_state)
        model._step = step  # dropout masks continue where they were
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
    """Load weights saved by ``save_weights`` into a built model with the same architecture. The
    file must be a regular file no larger than the model's weights imply."""
    model._require_built("load_weights()")
    path = os.fspath(path)
    expected = _expected_weights(model)
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
    model._require_built("import_safetensors()")
    try:
        tensors = load(read_regular(path, MAX_TOTAL_BYTES))
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
    """The loop state of a checkpoint (its ``training.json``, checked), without touching any model."""
    try:
        reader = _Reader(path)
        return validate_training(reader.path, reader.json("training.json"))
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{os.fspath(path)}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from None


_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_training(path, training):
    """``training`` (a checkpoint's ``training.json``) with every field the loop reads checked;
    a FormatError names the field otherwise."""
    what = f"{path}: member 'training.json'"
    for key in ("epoch", "batch", "count", "model_step"):
        value = training.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FormatError(f"{what}: {key} must be a non-negative integer, got {value!r}")
    if not isinstance(training.get("completed", False), bool):
        raise FormatError(f"{what}: completed must be true or false, got {training.get('completed')!r}")
    state = training.get("sampler_state")
    if state is not None:
        name = state.get("bit_generator") if isinstance(state, dict) else None
        if name not in _BIT_GENERATORS:
            raise FormatError(f"{what}: sampler_state must be a NumPy bit generator's state "
                              f"({', '.join(_BIT_GENERATORS)}), got {str(state)[:80]!r}")
        try:
            getattr(numpy.random, name)().state = state  # a throwaway generator: the check, not the use
        except Exception as exc:
            raise FormatError(f"{what}: sampler_state is not a valid {name} state ({type(exc).__name__}: {exc})") from None
    sums = training.get("sums") or {}
    if not isinstance(sums, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in sums.items()):
        raise FormatError(f"{what}: sums must map metric names to numbers, got {str(sums)[:80]!r}")
    history = training.get("history")
    if history is not None:
        ok = (isinstance(history, dict) and isinstance(history.get("history"), dict)
              and isinstance(history.get("epoch"), list)
              and all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in history["epoch"])
              and all(isinstance(k, str) and isinstance(v, list) and all(_is_number(x) or x is None for x in v)
                      for k, v in history["history"].items()))
        if not ok:
            raise FormatError(f"{what}: history must be {{'history': {{name: [numbers]}}, 'epoch': [integers]}}")
    if training.get("run") is not None and not isinstance(training["run"], dict):
        raise FormatError(f"{what}: run must be an object")
    return training


class Checkpoint:
    """A checkpoint read and checked in full, not yet applied: ``apply(model)`` cannot fail on the
    file's account, so a bad checkpoint never leaves a model half-restored."""

    def __init__(self, path, weights, optimizer, seeds, lr, training):
        self.path, self.weights, self.optimizer = path, weights, optimizer
        self.seeds, self.lr, self.training = seeds, lr, training

    def apply(self, model):
        _set_weights(model, self.weights)
        _apply_optimizer(model, self.optimizer)
        for layer, seed in zip(model.layers, self.seeds):
            if seed is not None:
                layer.seed = seed  # dropout masks continue as they were
        if self.lr is not None:
            model.optimizer.lr = self.lr  # a callback may have changed it
        model._step = self.training["model_step"]
        return self.training


def read_checkpoint(model, path):
    """Read and check a checkpoint for ``model`` (same architecture and optimizer) without changing
    the model: sizes against the model's, arrays, seeds, learning rate and ``training.json``."""
    path = os.fspath(path)
    model._require_built("restoring a checkpoint")
    try:
        reader = _Reader(path)
        config, _, _, specs = _architecture(reader)
        what = f"{path}: member 'config.json'"
        saved = [spec.get("class_name") for spec in specs]
        mine = [type(layer).__name__ for layer in model.layers]
        if saved != mine:
            raise FormatError(f"{what}: the checkpoint's layers {saved} differ from the model's {mine}")
        opt_spec = (config.get("compile") or {}).get("optimizer") or {}
        opt = model.optimizer
        if opt is not None and opt_spec.get("class_name") != type(opt).__name__:
            raise FormatError(f"{what}: the checkpoint's optimizer {opt_spec.get('class_name')!r} differs from "
                              f"the model's {type(opt).__name__!r}")
        expected = _expected_weights(model)
        reader.expect("weights.npz", expected.values(), "the model's weights")
        if opt is not None and reader.has("optimizer.npz"):
            reader.expect("optimizer.npz", [()] + [(model.flat.size,)] * len(opt.slots),
                          f"{type(opt).__name__}'s step count and {len(opt.slots)} slot(s)")
        step = _metadata_step(reader)
        training = validate_training(path, reader.json("training.json"))
        weights = reader.arrays("weights.npz", expected)
        bad = [k for k, w in weights.items() if not numpy.isfinite(w).all()]
        if bad:
            raise FormatError(f"{path}: member 'weights.npz': array {bad[0]!r} holds non-finite values "
                              f"(fastnn never writes such a checkpoint)")
        opt_state = _read_optimizer(reader, model, opt)
        seeds = []
        for i, (layer, spec) in enumerate(zip(model.layers, specs)):
            seed = (spec.get("config") or {}).get("seed") if hasattr(layer, "seed") else None
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
                raise FormatError(f"{what}: layer {i}: seed must be an integer in [0, 2**63), got {seed!r}")
            seeds.append(seed)
        lr = (opt_spec.get("config") or {}).get("lr")
        if opt is None or not _is_number(lr):
            lr = None  # a schedule computes its rate from the step count
        elif not math.isfinite(lr) or lr < 0:
            raise FormatError(f"{what}: the optimizer's lr must be a finite non-negative number, got {lr!r}")
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{path}: cannot restore the checkpoint ({type(exc).__name__}: {exc})") from None
    del step  # metadata's step is checked; training.json's model_step is the one a resume uses
    return Checkpoint(path, weights, opt_state, seeds, None if lr is None else float(lr), training)


def restore_checkpoint(model, path):
    """Load a checkpoint written by ``write_checkpoint`` into ``model`` (same architecture and
    optimizer) and return its loop state. Everything is read and checked before any weight of the
    model is overwritten."""
    return read_checkpoint(model, path).apply(model)


# ---------------------------------------------------------------- run fingerprints
def run_fingerprint(model, run=None):
    """What identifies a training run, stored with each of its checkpoints: the architecture (layer
    classes and settings, without names and dropout seeds, which differ between runs of one
    script), dtype and input shape, the optimizer and its settings, the loss, and, from ``fit``
    (``run``), the number of training samples, the batch size, shuffling and the seed."""
    layers = []
    for layer in model.layers:
        cfg = layer.get_config()
        layers.append({"class_name": type(layer).__name__,
                       "config": {k: v for k, v in cfg.items() if k not in ("name", "seed", "seed_drawn")}})
    opt = model.optimizer
    # The optimizer as compiled: callbacks (LearningRateScheduler, ReduceLROnPlateau) change its
    # learning rate during the run, and an interrupted run fitted again must still match its backups.
    opt_config = None if opt is None else (getattr(opt, "initial_config", None) or opt.get_config())
    fp = {"layers": layers, "dtype": str(model.dtype),
          "input_shape": list(model.input_shape) if model.input_shape else None,
          "optimizer": None if opt is None else {"class_name": type(opt).__name__, "config": opt_config},
          "loss": None if model.loss is None else getattr(model.loss, "name", type(model.loss).__name__)}
    for key in ("samples", "batch_size", "shuffle", "seed"):
        if run is not None and key in run:
            fp[key] = run[key]
    return json.loads(json.dumps(fp, default=lambda o: type(o).__name__))


_WHAT = {"layers": "the layers", "dtype": "the dtype", "input_shape": "the input shape", "optimizer": "the optimizer",
         "loss": "the loss", "samples": "the number of training samples", "batch_size": "the batch size",
         "shuffle": "shuffle", "seed": "the seed"}


def check_fingerprint(path, saved, mine, folder):
    """Refuse to resume the checkpoint ``path`` of a different run: a ``CheckpointMismatchError``
    naming what differs and how to start fresh. A checkpoint without a fingerprint (older fastnn)
    and fields this run does not know are not compared."""
    if not isinstance(saved, dict):
        return
    diffs = []
    for key in mine:
        if key in saved and saved[key] != mine[key]:
            there, here = json.dumps(saved[key]), json.dumps(mine[key])
            if len(there) > 120 or len(here) > 120:
                diffs.append(_WHAT.get(key, key))
            else:
                diffs.append(f"{_WHAT.get(key, key)} ({there} there, {here} here)")
    if diffs:
        raise CheckpointMismatchError(
            f"{path}: this checkpoint belongs to a different run: {'; '.join(diffs)} differ. To start fresh, "
            f"delete the folder {folder} (or give fit another checkpoint_dir), or call fit(..., resume=False), "
            f"which starts this run anew and replaces that folder's backups")
