"""`fairl env`: what a bug report needs to know about this machine (cf. `trl env`, `accelerate
env`): versions, devices, threads, and where fairl and the Hugging Face libraries cache."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from pipeline.artifacts import git_commit, package_versions
from pipeline.hub import cache_root
from pipeline.runtime import default_threads

ENV_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME",
             "FAIRL_CACHE", "OMP_NUM_THREADS", "MKL_CBWR", "CUDA_VISIBLE_DEVICES")  # fmt: skip


def devices() -> dict[str, Any]:
    """The accelerators torch sees, with what each supports (bf16, TF32)."""
    out: dict[str, Any] = {"cuda": torch.cuda.is_available()}
    if out["cuda"]:
        out["cuda_version"] = torch.version.cuda
        out["gpus"] = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out["gpus"].append(
                {
                    "name": p.name,
                    "memory_gib": round(p.total_memory / 2**30, 1),
                    "capability": f"{p.major}.{p.minor}",
                    "bf16": torch.cuda.is_bf16_supported(),
                    "tf32": p.major >= 8,
                }
            )
    mps = getattr(torch.backends, "mps", None)
    out["mps"] = bool(mps and mps.is_available())
    return out


def environment() -> dict[str, Any]:
    """Everything `fairl env` prints, as one dict (YAML-printable)."""
    from huggingface_hub import constants

    return {
        "fairl": package_versions().get("fairl"),
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {k: v for k, v in package_versions().items() if k not in ("fairl", "python")},
        "cpu": {
            "count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "physical_cores": default_threads(),
        },
        "devices": devices(),
        "caches": {
            "fairl": str(cache_root()),
            "hf_hub": str(constants.HF_HUB_CACHE),
            "hf_home": str(constants.HF_HOME),
        },
        "environment": {k: os.environ[k] for k in ENV_FLAGS if k in os.environ},
    }
