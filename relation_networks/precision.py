"""Which precision to train in: `train.precision: auto` picks mixed bfloat16 only where the hardware has it.

Mixed bfloat16 is the largest speed lever for the relation MLP on a CPU whose matrix units compute in bfloat16
(AMX-BF16, AVX512-BF16) -- on such a machine the Sort-of-CLEVR CNN+RN trains 1.6x faster than in float32
(docs/RESULTS.md, "Training throughput"). On a CPU without them oneDNN emulates bfloat16 and the same model is
2.5x *slower* than in float32 (an AVX2-only AMD EPYC: 65 against 164 questions/s, docs/RESULTS.md). `auto`
therefore resolves per machine:

    CPU with amx_bf16 or avx512_bf16 (/proc/cpuinfo flags)   -> mixed_bfloat16
    GPU of compute capability 8.0 or newer (Ampere and later) -> mixed_bfloat16
    anything else                                             -> float32

Variables are float32 under both policies, so a checkpoint written under one resumes under the other.
"""

PRECISIONS = ("auto", "float32", "mixed_bfloat16")
BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


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


def resolve(precision, flags=None):
    """The Keras dtype policy name for `train.precision`: `auto` -> `mixed_bfloat16` or `float32` (see above);
    an explicit `float32` / `mixed_bfloat16` is returned as it is."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if native_bfloat16(flags) else "float32"


def describe():
    """A short note on this machine's bfloat16 support, for logs and metrics.json."""
    flags = cpu_flags()
    present = [f for f in BFLOAT16_CPU_FLAGS if f in flags]
    return {"bfloat16_cpu_flags": present, "bfloat16_native": native_bfloat16(flags)}
