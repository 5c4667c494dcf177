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
SELU = 7
GELU = 8        # Keras's gelu (approximate=False): z * Phi(z), Phi the standard normal CDF
GELU_TANH = 9   # gelu(approximate=True): the tanh approximation (PyTorch's approximate="tanh")
SWISH = 10      # swish = silu = z * sigmoid(z)

ACTIVATIONS = {
    "linear": LINEAR,
    "relu": RELU,
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "leaky_relu": LEAKY_RELU,
    "elu": ELU,
    "softplus": SOFTPLUS,
    "selu": SELU,
    "gelu": GELU,
    "gelu_tanh": GELU_TANH,
    "swish": SWISH,
    "silu": SWISH,  # Keras names both; the code's name (ACTIVATION_NAMES) is silu
}

ACTIVATION_NAMES = {code: name for name, code in ACTIVATIONS.items()}

# Activations whose derivative is written from the pre-activation z, not from the output y (gelu's
# and swish's are not functions of y): a layer keeps z for them (bias_act's z_out=) and passes it to
# the backward primitives (z=). Every other code's derivative comes from y alone, as before.
NEEDS_Z = frozenset({GELU, GELU_TANH, SWISH})

# Constants of the formulas (Keras 3, keras/src/backend/*/nn.py and keras/src/activations/activations.py):
# selu(z) = SELU_SCALE * z for z > 0, else SELU_SCALE * SELU_ALPHA * (e^z - 1) (Klambauer et al. 2017);
# gelu's tanh form 0.5 z (1 + tanh(sqrt(2/pi) (z + GELU_TANH_C z^3))) (Hendrycks & Gimpel 2016).
# Every implementation rounds them to the data's dtype (CUDA: the same literals in common.cuh).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
GELU_TANH_C = 0.044715
# gelu's exponentials (e^(-z^2/2) in the exact form's derivative, e^-|v| with v = 2 sqrt(2/pi)
# (z + GELU_TANH_C z^3) in the tanh form's sigmoid) read z clipped to +-GELU_CLIP: beyond it they are
# below e^-800, 0 in float32 and float64 alike, so no result changes, but z^2 and z^3 cannot overflow.
GELU_CLIP = 40.0

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
