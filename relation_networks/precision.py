"""Which precision to train in: `train.precision: auto` picks mixed bfloat16 only where the hardware has it.

Mixed bfloat16 is the largest speed lever for the relation MLP on a CPU whose matrix units compute in bfloat16
(AMX-BF16, AVX512-BF16) -- on such a machine the Sort-of-CLEVR CNN+RN trains 1.6x faster than in float32
(docs/benchmarks.md). On a CPU without them oneDNN emulates bfloat16 and the same model is
2.5x *slower* than in float32 (an AVX2-only AMD EPYC: 65 against 164 questions/s, docs/benchmarks.md). `auto`
therefore resolves per machine:

    CPU with amx_bf16 (/proc/cpuinfo flags)                   -> mixed_bfloat16
    CPU with avx512_bf16 but no AMX                           -> measured: mixed_bfloat16 if a bfloat16 matmul at
                                                                 the relation MLP's shape runs at least 1.25x as
                                                                 fast as in float32, else float32
    GPU of compute capability 8.0 or newer (Ampere and later) -> mixed_bfloat16
    anything else                                             -> float32

AVX512-BF16 alone is not enough to decide: on an AMD EPYC with it a one-core bfloat16 matmul ran at about twice the
float32 rate, while on an Intel Xeon with it (and AVX512-FP16, but no AMX exposed) it ran at 0.65-0.77 times
(docs/benchmarks.md). The measurement takes about a second, once per process.

Variables are float32 under both policies, so a checkpoint written under one resumes under the other.
"""

PRECISIONS = ("auto", "float32", "mixed_bfloat16")
BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
MIN_BFLOAT16_SPEEDUP = 1.25  # below this, the casts of mixed precision eat the faster matmuls
_measured = {}  # the one measurement of bfloat16_speedup() in this process


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU feature flags the kernel reports (an empty set where there is no /proc/cpuinfo)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _gpu_has_bfloat16():
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and tuple(capability) >= (8, 0):
            return True
    return False


def native_bfloat16(flags=None):
    """Whether this machine computes bfloat16 matmuls in hardware: a CPU with AMX-BF16 / AVX512-BF16 or a GPU of
    compute capability >= 8.0. `flags` overrides the CPU flags read from /proc/cpuinfo (for tests)."""
    flags = cpu_flags() if flags is None else set(flags)
    return bool(flags & set(BFLOAT16_CPU_FLAGS)) or _gpu_has_bfloat16()


def bfloat16_speedup(rows=4096, width=256, calls=8, repeats=5):
    """How many times faster a `[rows, width] x [width, width]` matmul (the relation MLP's shape) runs in bfloat16
    than in float32 on this machine, with TensorFlow's current thread settings: the ratio of the medians of
    `repeats` timings of `calls` matmuls each, the two dtypes timed alternately. Measured once per process."""
    if "speedup" not in _measured:
        import time

        import numpy as np
        import tensorflow as tf

        rng = np.random.default_rng(0)
        matmul = tf.function(tf.matmul)
        operands = {dtype: (tf.cast(rng.standard_normal((rows, width)), dtype),
                            tf.cast(rng.standard_normal((width, width)), dtype))
                    for dtype in (tf.float32, tf.bfloat16)}
        seconds = {dtype: [] for dtype in operands}
        for _ in range(repeats + 1):  # the first round traces and warms up; it is not counted
            for dtype, (a, b) in operands.items():
                start = time.perf_counter()
                for _ in range(calls):
                    product = matmul(a, b)
                product.numpy()
                seconds[dtype].append(time.perf_counter() - start)
        _measured["speedup"] = float(np.median(seconds[tf.float32][1:]) / np.median(seconds[tf.bfloat16][1:]))
    return _measured["speedup"]


def resolve(precision, flags=None, speedup=None):
    """The Keras dtype policy name for `train.precision`: `auto` -> `mixed_bfloat16` or `float32` (see above);
    an explicit `float32` / `mixed_bfloat16` is returned as it is. `flags` and `speedup` replace the CPU flags and
    the measured `bfloat16_speedup()` (for tests)."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    flags = cpu_flags() if flags is None else set(flags)
    if "amx_bf16" in flags or _gpu_has_bfloat16():
        return "mixed_bfloat16"
    if "avx512_bf16" not in flags:
        return "float32"
    speedup = bfloat16_speedup() if speedup is None else speedup
    return "mixed_bfloat16" if speedup >= MIN_BFLOAT16_SPEEDUP else "float32"


def describe():
    """A short note on this machine's bfloat16 support, for logs and metrics.json: the CPU's bfloat16 flags, whether
    it has any, and the measured bfloat16 matmul speed-up if `auto` measured it in this process."""
    flags = cpu_flags()
    present = [f for f in BFLOAT16_CPU_FLAGS if f in flags]
    note = {"bfloat16_cpu_flags": present, "bfloat16_native": native_bfloat16(flags)}
    if "speedup" in _measured:
        note["bfloat16_speedup"] = _measured["speedup"]
    return note
