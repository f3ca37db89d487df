"""Which machine and which software produced a measurement (printed with every benchmark table)."""
import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Dict, Optional

import psutil
import torch

import sam_nnunet
from sam_nnunet.nnunet_prediction import cpu_bf16_native, cpu_bf16_setting


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git_commit(folder: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", folder, "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def describe_machine() -> Dict:
    """CPU model, cores, memory, GPU; versions of python, torch, nnunetv2, sam-nnunet (with its git commit)."""
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_bytes": int(props.total_memory), "count": torch.cuda.device_count(),
               "cuda": torch.version.cuda}
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "usable_cores": usable_cores,
        "memory_bytes": int(psutil.virtual_memory().total), "gpu": gpu,
        # the precision of CPU prediction for networks that declare cpu_bf16_prediction (ZAP)
        "cpu_bf16": {"native": cpu_bf16_native(), "setting": cpu_bf16_setting()},
        "os": platform.platform(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "nnunetv2": _version("nnunetv2"), "sam-nnunet": _version("sam-nnunet"),
                     "sam-nnunet commit": _git_commit(os.path.dirname(os.path.abspath(sam_nnunet.__file__))),
                     "monai": _version("monai"), "numpy": _version("numpy")},
        "executable": sys.executable,
    }


def machine_line(machine: Dict) -> str:
    """One line: 'Intel Xeon ..., 2 cores, 24 GiB RAM, no GPU'."""
    gpu = machine.get("gpu")
    gpu_text = "no GPU"
    if gpu:
        gpu_memory = gpu.get("memory_bytes")
        gpu_text = f"{gpu.get('name')}" + (f" ({gpu_memory / 2 ** 30:.0f} GiB)" if gpu_memory else "")
    bf16 = machine.get("cpu_bf16")
    bf16_text = (f"; CPU bfloat16 {'native' if bf16.get('native') else 'not native'}, "
                 f"nnUNet_SAM_cpu_bf16={bf16.get('setting')}" if bf16 else "")
    # a record from an older version, or edited by hand, may lack a field: the line says so instead of a KeyError
    memory = machine.get("memory_bytes")
    memory_text = f"{memory / 2 ** 30:.0f} GiB RAM" if isinstance(memory, (int, float)) else "RAM not recorded"
    return (f"{machine.get('cpu', 'CPU not recorded')}, {machine.get('usable_cores', '?')} cores, {memory_text}, "
            f"{gpu_text}; {machine.get('os', 'OS not recorded')}{bf16_text}")


def versions_line(machine: Dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
