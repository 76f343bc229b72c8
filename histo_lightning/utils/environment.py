"""What can make two machines give different numbers for the same command (recorded in ``run_info.json``).

The same command twice on one machine gives identical results (seeded; a test checks it). Two machines
of the same kind can still differ in the last bits of CPU (or GPU) arithmetic, and a trained network
amplifies that: the kernels PyTorch picks depend on the instruction set it detects (``cpu_capability``:
AVX2 vs AVX512 kernels sum in different orders), on the math libraries it was built with (MKL,
oneDNN) and their versions, on how many threads split a reduction (intra-op and inter-op threads,
``OMP_NUM_THREADS``), and on whether deterministic algorithms were requested. :func:`machine_info`
records all of these, so two runs that disagree can be told apart by their ``run_info.json``.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

# instruction-set extensions that decide which SIMD kernels run (a subset of /proc/cpuinfo's flags)
ISA_FLAG = re.compile(
    r"^(sse\S*|ssse3|avx\S*|fma\S*|f16c|amx\S*|bmi\S*|vnni\S*|neon|asimd\S*|sve\S*)$"
)
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "KMP_AFFINITY",
    "OMP_PROC_BIND",
    "ATEN_CPU_CAPABILITY",
    "CUBLAS_WORKSPACE_CONFIG",
    "PYTHONHASHSEED",
)


def cpu_description() -> dict[str, Any]:
    """CPU model, core count and instruction-set flags (``/proc/cpuinfo`` where it exists)."""
    model, flags = platform.processor() or platform.machine(), []
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "cpu model", "hardware") and value.strip():
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = sorted(f for f in value.split() if ISA_FLAG.match(f))
    return {
        "model": model,
        "architecture": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "isa_flags": flags,
    }


def _build_libraries() -> dict[str, str]:
    """The math libraries torch was built with (lines of ``torch.__config__.show()``)."""
    wanted = {
        "Math Kernel Library": "mkl",
        "MKL-DNN": "onednn",
        "OpenMP": "openmp",
        "LAPACK": "lapack",
    }
    found: dict[str, str] = {}
    for line in torch.__config__.show().splitlines():
        text = line.strip().lstrip("- ").strip()
        for marker, name in wanted.items():
            if marker in text and name not in found:
                found[name] = text
    return found


def machine_info() -> dict[str, Any]:
    """Everything in the module docstring, as plain JSON-able data."""
    cudnn = torch.backends.cudnn
    info: dict[str, Any] = {
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": cpu_description(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pytorch_lightning": pl.__version__,
            "numpy": np.__version__,
        },
        "torch_build": {
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "parallel_backend": next(
                (
                    line.split(":", 1)[1].strip()
                    for line in torch.__config__.parallel_info().splitlines()
                    if line.startswith("ATen parallel backend")
                ),
                None,
            ),
            **_build_libraries(),
            "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
        },
        "threads": {
            "intra_op": torch.get_num_threads(),
            "inter_op": torch.get_num_interop_threads(),
        },
        "environment": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "deterministic": {
            "torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(cudnn.deterministic),
            "cudnn_benchmark": bool(cudnn.benchmark),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
    }
    if torch.cuda.is_available():
        info["cuda"] = {
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "cuda": torch.version.cuda,
            "cudnn": cudnn.version(),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(cudnn.allow_tf32),
        }
    return info


__all__ = ["cpu_description", "machine_info"]
