"""Which device a serving process uses: CUDA when present, else the CPU.

``best_device()`` never initialises CUDA in a process that will fork: it only
asks torch whether a GPU exists (``torch.cuda.is_available()`` does not create
a context). ``onnx_providers(device)`` gives ONNX Runtime's provider list in
order of preference (CUDA → CPU), limited to the ones installed.
``release_memory()`` frees what dropped models held, CUDA's cache included.
"""

from __future__ import annotations

import gc
import os
import sys


def best_device() -> str:
    forced = os.environ.get("MLSERVICES_DEVICE")
    if forced:
        return forced
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def onnx_providers(device: str) -> list[str]:
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    return [p for p in wanted if p in available]


def release_memory() -> None:
    """Collect what dropped models held now, and empty CUDA's cache when CUDA is in use
    (without initialising it in a process that never used it)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
