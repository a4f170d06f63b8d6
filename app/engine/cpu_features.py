"""Which INT8 dot-product path ONNX Runtime's CPU kernels take here, from /proc/cpuinfo's flags.

On x86 without VNNI, ONNX Runtime's u8s8 kernels (QLinearConv, MatMulInteger) multiply with
vpmaddubsw, which adds each pair of uint8 x int8 products into int16 *with saturation*: 2 x 255 x 127 =
64770 does not fit, so large activations against large weights clip silently (measured: an all-255 x
all-127 QLinearConv returns half the exact value under an AVX2-only CPU model). VNNI (vpdpbusd:
AVX512-VNNI or AVX-VNNI; AMX-INT8 CPUs have it too) accumulates into int32 and does not saturate. ONNX
Runtime's remedy for the former is `reduce_range` (7-bit weights: 2 x 255 x 64 = 32640 fits). Arm's
integer kernels (sdot/udot or widening multiplies) do not saturate, so nothing changes there.
"""

from __future__ import annotations

import platform
from pathlib import Path

# /proc/cpuinfo flag names of the int8 dot-product instructions that accumulate in int32
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
X86_MACHINES = frozenset({"x86_64", "amd64", "x64", "i386", "i486", "i586", "i686", "x86"})
# What cpu_int8_isa answers
X86_VNNI, X86_NO_VNNI, NOT_X86 = "x86-vnni", "x86-no-vnni", "not-x86"


def cpuinfo_flags(cpuinfo: str) -> str:
    """The first CPU's feature list of a /proc/cpuinfo text ("flags" on x86, "Features" on Arm); "" if none."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return value.strip()
    return ""


def has_vnni(flags: str) -> bool:
    """Whether an x86 flags string names an int8 dot product that accumulates in int32 (VNNI or AMX)."""
    names = set(flags.lower().split())
    return bool(names & VNNI_FLAGS) or any(n.startswith("amx") for n in names)


def is_x86(machine: str) -> bool:
    """Whether a ``platform.machine()`` string names an x86 CPU (32 or 64 bit)."""
    return machine.strip().lower() in X86_MACHINES


def cpu_int8_isa(flags: str, machine: str) -> str:
    """Classify the CPU's int8 path from its flags and machine name.

    Returns:
        X86_VNNI, X86_NO_VNNI (u8s8 kernels saturate: quantize with reduce_range) or NOT_X86 (no change).
    """
    if not is_x86(machine):
        return NOT_X86
    return X86_VNNI if has_vnni(flags) else X86_NO_VNNI


def needs_reduce_range(isa: str) -> bool:
    """Whether weights must be quantized to 7 bits (``reduce_range``) for this ``cpu_int8_isa`` answer."""
    return isa == X86_NO_VNNI


def host_cpu_int8_isa(cpuinfo: str | Path = "/proc/cpuinfo", machine: str | None = None) -> str:
    """Run cpu_int8_isa on this machine.

    An x86 box whose flags cannot be read counts as without VNNI (the safe side: 7-bit weights cost a
    little accuracy everywhere, saturation costs a lot where it happens).

    Args:
        cpuinfo: The cpuinfo file to read (injectable for tests).
        machine: Machine name; None uses ``platform.machine()``.
    """
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    return cpu_int8_isa(cpuinfo_flags(text), machine if machine is not None else platform.machine())
