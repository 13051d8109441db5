"""Which device a serving process uses: CUDA when present, else the CPU.

``best_device()`` never initialises CUDA in a process that will fork: it only
asks torch whether a GPU exists (``torch.cuda.is_available()`` does not create
a context). ``onnx_providers(device)`` gives ONNX Runtime's provider list in
order of preference (CUDA → CPU), limited to the ones installed.
"""

from __future__ import annotations

import os


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
