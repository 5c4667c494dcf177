"""The file layer under ``fastnn.saving`` and ``fastnn.checkpoint``: atomic writes, the checkpoint
folder's lock, and bounded reading of ``.fastnn`` zips and ``.npz`` members. It knows files and
arrays, never models: it imports nothing of fastnn above ``errors``.

A ``.fastnn`` file is a zip of ``config.json`` (architecture and compile settings),
``metadata.json`` (format version, fastnn version, backend, dtype), ``weights.npz`` and, when
saved, ``optimizer.npz`` (slots and step count) and ``training.json`` (a checkpoint's loop state);
``fastnn.saving`` writes and reads it.

Reading never executes anything from a file: arrays are read with ``allow_pickle=False``, member
names and sizes are checked from the zip directory before anything is decompressed, and every
array header (dtype, shape) is checked before its data is read. Every failure raises
``fastnn.FormatError`` naming the file, the member and what is wrong.

Bounds: only regular files are opened (a FIFO or a device such as ``/dev/zero`` is refused by
name), and at most their ``st_size`` bytes are read. The JSON members are read first (16 MiB at
most each); the caller then states the shapes a member must hold (``_Reader.expect``, from the
architecture in ``config.json``), so the bytes ``weights.npz`` and ``optimizer.npz`` may expand to
are known before any array is decompressed: a member that declares more (a zip bomb) or less (a
tiny file claiming a huge layer) is refused. No ratio is judged, so all-zero optimizer slots (a
model saved before training, a large frozen part), which compress a thousandfold, load.

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

from fastnn.errors import FolderInUseError, FormatError

FORMAT_VERSION = 1
MEMBERS = ("config.json", "metadata.json", "weights.npz", "optimizer.npz", "training.json")
MAX_JSON_BYTES = 16 << 20
MAX_ARRAY_BYTES = 8 << 30
MAX_TOTAL_BYTES = 16 << 30
ARRAY_OVERHEAD = 16 << 10  # per array in an npz: its .npy header (numpy caps it at 10000) and zip headers
TMP_PREFIX = ".fastnn-tmp-"
LOCK_NAME = ".fastnn-lock"
FLOAT_DTYPES = {"<f4", "<f8"}


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


def npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    numpy.savez(buf, **{k: numpy.array(v, order="C", copy=True) for k, v in arrays.items()})
    return buf.getvalue()


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

    def arrays(self, name, expected=None, allowed_dtypes=FLOAT_DTYPES):
        """``{key: array}`` from an npz member (see ``read_npz``)."""
        return read_npz(self.read(name), f"{self.path}: member {name!r}", expected, allowed_dtypes)


def read_npz(raw, what, expected=None, allowed_dtypes=FLOAT_DTYPES):
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
