"""Numba CPU kernels (``@njit(cache=True, error_model="numpy")``), one module per family."""

import hashlib as _hashlib
import os as _os
import sys as _sys


def flush_if_stale(module_name, *deps):
    """Numba keys a file's on-disk cache on that file alone. A kernel file that calls njit functions
    of other files (``deps``, modules) compiles their code into its own cached binaries, which a
    change to those files would not invalidate: keep a hash of all their sources beside the cache
    and flush the module's cached functions when it changes. Call at the end of the module."""
    from numba.core.caching import FunctionCache

    module = _sys.modules[module_name]
    sha = _hashlib.sha256()
    for m in (*deps, module):
        with open(m.__file__, "rb") as f:
            sha.update(f.read())
    digest = sha.hexdigest()
    cached = [d for d in vars(module).values() if isinstance(getattr(d, "_cache", None), FunctionCache)]
    if not cached:
        return
    stamp = _os.path.join(cached[0]._cache.cache_path, module_name.rsplit(".", 1)[-1] + "-sources.sha256")
    try:
        with open(stamp) as f:
            if f.read() == digest:
                return
    except OSError:
        pass
    for dispatcher in cached:
        dispatcher._cache.flush()
    try:
        _os.makedirs(_os.path.dirname(stamp), exist_ok=True)
        with open(stamp, "w") as f:
            f.write(digest)
    except OSError:
        pass  # a read-only cache: flushed now, and again next time
