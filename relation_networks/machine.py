"""The machine a result was measured on, written next to every result (metrics.json, model cards, benchmarks)."""

import os
import platform

from relation_networks import precision


def hardware():
    """A short description of the machine, written next to every result."""
    import keras
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        **precision.describe(),
    }

def bfloat16_text(hw):
    """`bfloat16 in hardware: yes (amx_bf16)` / `... no` for a `hardware()` record, or None for records written
    before train.precision=auto (they hold no bfloat16 fields)."""
    if "bfloat16_native" not in hw:
        return None
    flags = ", ".join(hw.get("bfloat16_cpu_flags") or [])
    if "bfloat16_speedup" in hw:  # measured by train.precision=auto
        flags += f"; matmuls {hw['bfloat16_speedup']:.2f}x as fast as float32"
    answer = "no" if not hw["bfloat16_native"] else f"yes ({flags})" if flags else "yes (GPU)"
    return f"bfloat16 in hardware: {answer}"

def hardware_text(hw):
    """One line for a results table: CPU, cores, bfloat16 hardware (where recorded), TensorFlow and Keras."""
    parts = [hw["cpu"], f"{hw['cores']} cores", bfloat16_text(hw), f"TensorFlow {hw['tensorflow']}",
             f"Keras {hw['keras']}"]
    return ", ".join(p for p in parts if p)

def precision_note(requested, resolved):
    """`float32`, or e.g. `auto -> float32 (no bfloat16 hardware)` for the training log."""
    if requested != "auto":
        return resolved
    note = precision.describe()
    if "bfloat16_speedup" in note:
        reason = f"bfloat16 matmuls measured {note['bfloat16_speedup']:.2f}x as fast as float32"
    else:
        reason = "bfloat16 hardware" if resolved != "float32" else "no bfloat16 hardware"
    return f"auto -> {resolved} ({reason})"
