"""What this machine computes natively, and the training precision that follows from it.

bfloat16 halves the memory traffic of training, but only hardware that computes it
natively gains from it: x86 CPUs with AVX512_BF16 or AMX-BF16, and GPUs of compute
capability 8.0 (Ampere) or later. Elsewhere TensorFlow emulates bfloat16, and a CNN
trains many times slower than in float32 (measured here: about 10x on an AVX2-only AMD
EPYC; tensorflow/tensorflow#45441, #59050). ``choose_precision`` makes that call.

Nothing here imports TensorFlow at module level: the CLI reads CPU flags before it
decides to load anything heavy. Readers of CPU flags and of the GPU's compute
capability are parameters, so tests can ask "what on an AVX2 machine?" on any machine.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fmnist.errors import ConfigError

PRECISIONS = ("auto", "float32", "bfloat16")
# The instruction-set flags (as /proc/cpuinfo spells them) that decide speed here.
RELEVANT_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
                      "amx_bf16")
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
NATIVE_BF16_GPU_CAPABILITY = (8, 0)

FlagsReader = Callable[[], frozenset]
CapabilityReader = Callable[[], "tuple[int, int] | None"]


def read_cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset:
    """The CPU's feature flags (lower case) from ``/proc/cpuinfo``; empty where there is
    no such file (macOS, Windows) or it has no ``flags`` line (ARM says ``Features``)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.lower().split())
    return frozenset()


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's marketing name, e.g. 'AMD EPYC 7B13'; the platform's answer elsewhere."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def cpu_kind(flags: frozenset) -> str:
    """A short name for the class of CPU as far as training speed goes.

    "amx-bf16" / "avx512-bf16": native bfloat16; "avx512": AVX-512 without it; "avx2";
    "other" (non-x86, or an old x86). Benchmarks are kept apart per kind.
    """
    if "amx_bf16" in flags:
        return "amx-bf16"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "other"


def first_gpu() -> tuple[str, tuple[int, int]] | None:
    """(name, compute capability) of the first visible GPU, or None without one.

    Asked of the Keras backend's framework (TensorFlow by default, JAX or torch where
    ``KERAS_BACKEND`` names them), the one that will run the model; it imports it.
    """
    import os

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "jax":
        import jax

        gpus = [device for device in jax.devices() if device.platform == "gpu"]
        if not gpus:
            return None
        dotted = str(getattr(gpus[0], "compute_capability", "0.0"))
        return gpus[0].device_kind, tuple(int(part) for part in dotted.split(".")[:2])
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0))
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    capability = details.get("compute_capability")
    return details.get("device_name", gpus[0].name), tuple(capability) if capability else (0, 0)


def gpu_compute_capability() -> tuple[int, int] | None:
    """Compute capability of the first visible GPU (see ``first_gpu``), or None."""
    gpu = first_gpu()
    return None if gpu is None else gpu[1]


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run trains in, and why (recorded in config.json)."""

    requested: str  # "auto", "float32" or "bfloat16"
    precision: str  # "float32" or "bfloat16": what the run uses
    reason: str  # one sentence, printed when training starts
    native_bfloat16: bool  # whether this hardware computes bfloat16 natively

    @property
    def warning(self) -> str | None:
        """One line for an explicit bfloat16 on hardware that only emulates it."""
        if self.precision == "bfloat16" and not self.native_bfloat16:
            return ("bfloat16 was requested, but this hardware only emulates it, so training "
                    "will be many times slower than in float32; use --precision auto or float32")
        return None


def native_bfloat16(flags_reader: FlagsReader | None = None,
                    capability_reader: CapabilityReader | None = None,
                    x86: bool | None = None) -> tuple[bool, str]:
    """(whether bfloat16 is native here, the evidence in words).

    The readers default to this machine's (looked up at call time, so tests can stand
    in another machine's answers).
    """
    capability = (capability_reader or gpu_compute_capability)()
    if capability is not None:
        dotted = ".".join(map(str, capability))
        if tuple(capability) >= NATIVE_BF16_GPU_CAPABILITY:
            return True, f"the GPU (compute capability {dotted}) computes bfloat16 natively"
        return False, (f"the GPU's compute capability {dotted} is below 8.0, so bfloat16 "
                       "is not native there")
    flags = (flags_reader or read_cpu_flags)()
    if x86 is None:
        x86 = is_x86()
    found = [flag for flag in NATIVE_BF16_CPU_FLAGS if flag in flags]
    if x86 and found:
        return True, f"this CPU computes bfloat16 natively ({', '.join(found)})"
    if x86:
        return False, ("this CPU has no native bfloat16 (neither avx512_bf16 nor amx_bf16 "
                       "among its flags)")
    return False, f"native bfloat16 is only detected on x86 CPUs and GPUs, not {platform.machine()}"


def choose_precision(requested: str = "auto", flags_reader: FlagsReader | None = None,
                     capability_reader: CapabilityReader | None = None,
                     x86: bool | None = None) -> PrecisionChoice:
    """Resolve ``requested`` ("auto", "float32", "bfloat16") on this hardware.

    "auto" is bfloat16 exactly where it is native (see ``native_bfloat16``), float32
    everywhere else. An explicit choice is kept, with ``warning`` set when it is
    bfloat16 on hardware that emulates it.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    native, evidence = native_bfloat16(flags_reader, capability_reader, x86)
    if requested == "auto":
        precision = "bfloat16" if native else "float32"
        return PrecisionChoice("auto", precision, f"auto: {evidence}", native)
    return PrecisionChoice(requested, requested, f"{requested} as requested; {evidence}", native)


def dtype_policy(precision: str) -> str:
    """The Keras dtype policy of a resolved precision."""
    return {"float32": "float32", "bfloat16": "mixed_bfloat16"}[precision]
