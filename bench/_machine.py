"""What every bench output states about the machine it ran on: threads, CPU model, load.

    from _machine import machine_line, machine_info   # bench scripts run with bench/ on sys.path
    print(machine_line())  # "machine: AMD EPYC, 2 CPUs (torch threads 1), AVX2 (no native bf16), load 1.2 0.9 0.7"
    report["machine"] = machine_info()

Timings on a shared machine mean little without the load beside them, and a CPU with
native bfloat16 (AVX512-BF16 / AMX) changes which code paths are fastest (the SAE's bf16
selection, bf16 autocast), so both are printed with every figure. Nothing here imports
mechscope: peer interpreters may use it too.
"""

from __future__ import annotations

import os
import platform

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; the platform's processor string elsewhere."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine() or "unknown CPU", flags


def machine_info() -> dict:
    """CPU model, logical CPUs, torch's thread count (if torch is imported), the CPU's
    native-bf16 flags, torch's SIMD capability and the 1/5/15-minute load averages."""
    import sys

    model, flags = _cpuinfo()
    info = {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "bf16_flags": sorted(f for f in BF16_FLAGS if f in flags),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)  # torch >= 2.1
        if capability is not None:
            info["torch_cpu_capability"] = capability()
    info["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    return info


def machine_line(info: dict | None = None) -> str:
    """One line for a bench's output: the CPU, CPUs and threads, bf16 support, load now."""
    info = info or machine_info()
    threads = (
        f"torch threads {info['torch_threads']}"
        if "torch_threads" in info
        else f"OMP_NUM_THREADS {info['omp_num_threads'] or 'unset'}"
    )
    simd = info.get("torch_cpu_capability", "")
    bf16 = f"native bf16 ({', '.join(info['bf16_flags'])})" if info["bf16_flags"] else "no native bf16"
    load = " ".join(f"{x:.2f}" for x in info["load_average"]) if info["load_average"] else "n/a"
    return (
        f"machine: {info['cpu_model']}, {info['logical_cpus']} logical CPUs ({threads}), "
        f"{simd + ', ' if simd else ''}{bf16}; load average (1/5/15 min) {load}"
    )


def load_line() -> str:
    """The load average alone, for the end of a long bench."""
    return "load average (1/5/15 min) " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB: VmHWM, the high-water mark of its own address
    space. Not ru_maxrss: Linux carries that across exec from the forking parent (a bench's
    own RSS), which would give every child process the bench's floor."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**10  # kB
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # kB on Linux
