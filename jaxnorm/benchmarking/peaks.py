"""The device's published matmul peak, with its source, and a description of the machine for results files.

MFU is reported twice: against the `jnp.dot` peak measured in the same run (what this device delivers to XLA
today) and against the published figure (what the hardware is sold as). A GPU's figure is its datasheet's
dense tensor-core rate for the dtype JAX multiplies in (float32 matmuls run as TF32 at JAX's default
precision on NVIDIA GPUs since Ampere). A CPU has no single published figure for its virtual cores, so one is
derived, and says how: cores × clock × float32 FLOPs per cycle per core from the SIMD width and FMA pipes its
family has. Where neither is known the answer is None with the reason.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

# (test on jax's device_kind, float32-as-TF32 dense FLOP/s, bfloat16 dense FLOP/s, source). The datasheets
# print the rates with 2:4 sparsity; the dense rates are half of them.
_GPUS = (
    (lambda k: "H200" in k and "NVL" not in k, 494.7e12, 989.4e12,
     "NVIDIA H200 Tensor Core GPU datasheet (SXM): TF32 989 / BF16 1,979 TFLOPS with sparsity, halved for dense"),
    (lambda k: "H100" in k and ("HBM3" in k or "SXM" in k), 494.7e12, 989.4e12,
     "NVIDIA H100 Tensor Core GPU datasheet (SXM): TF32 989 / BF16 1,979 TFLOPS with sparsity, halved for dense"),
    (lambda k: "H100" in k and "PCIe" in k, 378.0e12, 756.0e12,
     "NVIDIA H100 Tensor Core GPU datasheet (PCIe): TF32 756 / BF16 1,513 TFLOPS with sparsity, halved for dense"),
    (lambda k: "A100" in k, 156.0e12, 312.0e12,
     "NVIDIA A100 Tensor Core GPU datasheet: TF32 156 / BF16 312 TFLOPS dense"),
)

# float32 FLOPs per cycle per core: FMA pipes × SIMD lanes × 2 (an FMA is two FLOPs).
_AMD_FAMILIES = {
    0x17: (32, "Zen 2: two 256-bit FMA pipes"),
    0x19: (32, "Zen 3/Zen 4: two 256-bit FMA pipes; Zen 4 runs AVX-512 as two halves"),
    0x1A: (64, "Zen 5: two 512-bit FMA pipes (server parts; mobile parts have 256-bit ones)"),
}


def cpu_info() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def _flops_per_cycle(info: dict[str, str]) -> tuple[int | None, str]:
    vendor, flags = info.get("vendor_id", ""), set(info.get("flags", "").split())
    try:
        family = int(info.get("cpu family", ""))
    except ValueError:
        family = None
    if vendor == "AuthenticAMD" and family == 0x17 and int(info.get("model", "0")) < 0x30:
        return 16, "Zen/Zen+: two 128-bit FMA pipes"
    if vendor == "AuthenticAMD" and family in _AMD_FAMILIES:
        return _AMD_FAMILIES[family]
    if vendor == "GenuineIntel" and "avx512f" in flags:
        return 64, "AVX-512 with two 512-bit FMA pipes, as on most Xeon Scalable parts (some have one: half that)"
    if vendor == "GenuineIntel" and {"avx2", "fma"} <= flags:
        return 32, "AVX2 with two 256-bit FMA pipes"
    return None, f"no FLOPs-per-cycle figure for vendor {vendor or 'unknown'}, family {family}"


def cpu_peak(cores: int | None = None) -> tuple[float | None, str]:
    """(float32 FLOP/s or None, how it was derived) for `cores` cores (default: those this process may use)."""
    info = cpu_info()
    cores = cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    per_cycle, why = _flops_per_cycle(info)
    try:
        mhz = float(info["cpu MHz"])
    except (KeyError, ValueError):
        return None, "unknown: /proc/cpuinfo gives no clock"
    if per_cycle is None:
        return None, f"unknown: {why}"
    return cores * mhz * 1e6 * per_cycle, (
        f"derived, not published: {cores} cores × {mhz / 1e3:.2f} GHz (cpu MHz in /proc/cpuinfo, as the OS or "
        f"hypervisor reports it; boost clocks are higher) × {per_cycle} float32 FLOP/cycle ({why})")


def published_peak(platform_name: str, device_kind: str, dtype: str) -> tuple[float | None, str]:
    """(the device's peak FLOP/s for matmuls in `dtype`, or None; where the figure comes from)."""
    if platform_name == "cpu":
        if dtype != "float32":
            return None, f"unknown: no {dtype} figure is derived for a CPU"
        return cpu_peak()
    for matches, f32, bf16, source in _GPUS:
        if matches(device_kind):
            return (f32 if dtype == "float32" else bf16), source
    return None, f"unknown: no published figure for {device_kind!r} in jaxnorm/benchmarking/peaks.py"


def machine_description() -> str:
    """Markdown bullets: date, platform, CPU, load, JAX's backend and devices."""
    import jax
    import jaxlib

    dev = jax.devices()[0]
    return "\n".join([
        f"- date: {datetime.date.today().isoformat()}",
        f"- platform: {platform.platform()} (Python {platform.python_version()})",
        f"- CPU: {cpu_info().get('model name', 'unknown')}, {os.cpu_count()} cores visible, load average "
        f"{os.getloadavg()[0]:.1f} at start",
        f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, backend {jax.default_backend()}, "
        f"{jax.device_count()} device(s), device kind: {dev.device_kind}",
    ])
