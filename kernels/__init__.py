"""Shared constants of fastnn's kernels (installed as ``fastnn.kernels``).

Activation codes are small integers understood by the NumPy reference, the Numba kernels and the
CUDA kernels alike. The list is append-only: codes are part of every kernel's contract.
"""

LINEAR = 0
RELU = 1
SIGMOID = 2
TANH = 3
LEAKY_RELU = 4
ELU = 5
SOFTPLUS = 6

ACTIVATIONS = {
    "linear": LINEAR,
    "relu": RELU,
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "leaky_relu": LEAKY_RELU,
    "elu": ELU,
    "softplus": SOFTPLUS,
}

ACTIVATION_NAMES = {code: name for name, code in ACTIVATIONS.items()}

# Dropout masks: a counter-based hash of (seed, step, global row, unit). Every backend computes
# the same 64-bit mix, so the same seed gives the same mask on NumPy, Numba and CUDA.
# The hash is splitmix64: element ``i = row * units + unit`` of the mask draws output ``i`` of the
# splitmix64 stream whose state starts at ``base = mix64(seed * HASH_K_SEED + step * HASH_K_STEP)``,
# i.e. ``mix64(base + i * HASH_GOLDEN)``; the top 24 bits give u in [0, 1), exact in float32, and
# the unit is kept when ``u >= rate``.
HASH_K_SEED = 0xD1B54A32D192ED03
HASH_K_STEP = 0x8CB92BA72F3D8DD7
HASH_GOLDEN = 0x9E3779B97F4A7C15
MIX_M1 = 0xBF58476D1CE4E5B9
MIX_M2 = 0x94D049BB133111EB
MASK64 = (1 << 64) - 1


def mix64(z):
    """splitmix64's finaliser on a Python int (mod 2**64): the host half of the dropout hash."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * MIX_M1) & MASK64
    z = ((z ^ (z >> 27)) * MIX_M2) & MASK64
    return z ^ (z >> 31)


def dropout_base(seed, step):
    """The per-(seed, step) start of the splitmix64 stream that dropout masks draw from."""
    return mix64(int(seed) * HASH_K_SEED + int(step) * HASH_K_STEP)
