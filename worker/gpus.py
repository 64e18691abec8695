"""Which devices `newsq worker --gpus` runs on: one worker process per selected GPU, or several
(`--processes-per-gpu`): one process's Python (Celery, tokenizing, writing) keeps a big GPU only
partly busy, and two processes on one GPU overlap their CPU work.

Pure logic (the caller passes the number of GPUs it sees), so it is unit-tested with fake
device counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class DeviceSelectionError(ValueError):
    """The --gpus value cannot be satisfied on this machine."""


@dataclass(frozen=True, slots=True)
class Slot:
    """One worker process: its CUDA_VISIBLE_DEVICES (None on CPU), node name and device."""

    visible_devices: str | None
    name: str
    device: str


def select_slots(spec: str, gpu_count: int, per_gpu: int = 1) -> list[Slot]:
    """`all`, `cpu`, or a comma-separated list of GPU indices such as `0,2`; `per_gpu` processes
    on each (named `gpu0`, or `gpu0-1`, `gpu0-2`, ... when there are several; `cpu-1`, ...)."""
    if per_gpu < 1:
        raise DeviceSelectionError(f"--processes-per-gpu {per_gpu}: expected 1 or more")
    spec = spec.strip().lower()
    if spec == "cpu":
        # Several CPU processes too: a stream of one-article messages is paced by each
        # process's own Python (Celery's per-message path), not by the cores.
        return [Slot(None, name, "cpu") for name in _names("cpu", per_gpu)]
    if spec == "all":
        if gpu_count == 0:
            raise DeviceSelectionError(
                "--gpus all: no GPU is visible on this machine; "
                "use --gpus cpu to run one CPU worker"
            )
        indices = list(range(gpu_count))
    else:
        try:
            indices = [int(part) for part in spec.split(",") if part.strip()]
        except ValueError:
            raise DeviceSelectionError(
                f"--gpus {spec!r}: expected all, cpu or indices like 0,1"
            ) from None
        if not indices:
            raise DeviceSelectionError("--gpus: no GPU index given")
        if len(set(indices)) != len(indices):
            raise DeviceSelectionError(f"--gpus {spec!r}: an index is repeated")
        missing = [i for i in indices if not 0 <= i < gpu_count]
        if missing:
            raise DeviceSelectionError(
                f"--gpus {spec!r}: no GPU {', '.join(map(str, missing))} ({gpu_count} visible)"
            )
    # Inside each process the one visible GPU is cuda:0.
    return [Slot(str(i), name, "cuda") for i in indices for name in _names(f"gpu{i}", per_gpu)]


def _names(device: str, per_device: int) -> list[str]:
    """`gpu0` for a lone process, else `gpu0-1`, `gpu0-2`, ..."""
    if per_device == 1:
        return [device]
    return [f"{device}-{k}" for k in range(1, per_device + 1)]


MPS_PIPE_DIRECTORY = "/tmp/nvidia-mps"  # NVIDIA's default, unless CUDA_MPS_PIPE_DIRECTORY says


def mps_control(environ: Mapping[str, str]) -> Path:
    """Where a running CUDA MPS control daemon listens: `control` in its pipe directory."""
    return Path(environ.get("CUDA_MPS_PIPE_DIRECTORY", MPS_PIPE_DIRECTORY)) / "control"


def mps_warning(slots: list[Slot], control: Path, running: bool) -> str | None:
    """What to tell the operator when several processes share a GPU and no CUDA MPS daemon runs
    (`running`: whether `control` exists; the caller looks).

    Without MPS their CUDA contexts take turns on the GPU in time slices; with it their kernels
    run side by side (8 processes, bert-base, H200: 47,050 -> 57,190 articles/s)."""
    per_gpu = Counter(slot.visible_devices for slot in slots if slot.device == "cuda")
    crowded = sorted(str(gpu) for gpu, count in per_gpu.items() if count > 1)
    if not crowded or running:
        return None
    return (
        f"several worker processes share GPU {', '.join(crowded)} without CUDA MPS (no "
        f"{control}): their kernels will take turns instead of running side by side; start "
        "`nvidia-cuda-mps-control -d` first (README: Scaling to N GPUs)"
    )
