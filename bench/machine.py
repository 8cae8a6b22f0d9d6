"""What machine a benchmark ran on, recorded beside its figures (imported by bench/*.py)."""

import os
import platform
from typing import Any, Dict


def describe() -> Dict[str, Any]:
    """CPU model, cores, platform, Python and TensorFlow versions, GPUs and the load average.

    The load average is read when this is called (benchmarks call it at the end), so a
    reader can tell how busy the machine was; the machines here are shared.
    """
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import tensorflow as tf

    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "gpus": [device.name for device in tf.config.list_physical_devices("GPU")],
            "load_average_at_end": [round(value, 2) for value in os.getloadavg()]}
