"""GPU selection for the launcher, with fake device counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.gpus import DeviceSelectionError, Slot, mps_control, mps_warning, select_slots


def test_all_gives_one_slot_per_visible_gpu() -> None:
    assert select_slots("all", 3) == [
        Slot("0", "gpu0", "cuda"),
        Slot("1", "gpu1", "cuda"),
        Slot("2", "gpu2", "cuda"),
    ]


def test_a_list_picks_those_gpus() -> None:
    assert [s.visible_devices for s in select_slots("0,2", 4)] == ["0", "2"]
    assert [s.name for s in select_slots(" 3 ", 4)] == ["gpu3"]


def test_several_processes_share_each_gpu() -> None:
    assert select_slots("0,2", 4, per_gpu=2) == [
        Slot("0", "gpu0-1", "cuda"),
        Slot("0", "gpu0-2", "cuda"),
        Slot("2", "gpu2-1", "cuda"),
        Slot("2", "gpu2-2", "cuda"),
    ]
    assert select_slots("all", 1, per_gpu=1) == [Slot("0", "gpu0", "cuda")]


def test_cpu_gives_one_cpu_worker_whatever_the_gpus() -> None:
    assert select_slots("cpu", 0) == [Slot(None, "cpu", "cpu")]
    assert select_slots("CPU", 8) == [Slot(None, "cpu", "cpu")]


def test_several_processes_can_share_the_cpu() -> None:
    assert select_slots("cpu", 0, per_gpu=2) == [
        Slot(None, "cpu-1", "cpu"),
        Slot(None, "cpu-2", "cpu"),
    ]


@pytest.mark.parametrize(
    ("spec", "count", "message"),
    [
        ("all", 0, "no GPU is visible"),
        ("0,1", 1, r"no GPU 1 \(1 visible\)"),
        ("0,0", 2, "repeated"),
        ("first", 2, "expected all, cpu or indices"),
        (",", 2, "no GPU index"),
        ("-1", 2, "no GPU -1"),
    ],
)
def test_impossible_selections_say_why(spec: str, count: int, message: str) -> None:
    with pytest.raises(DeviceSelectionError, match=message):
        select_slots(spec, count)


def test_processes_per_gpu_must_be_positive() -> None:
    with pytest.raises(DeviceSelectionError, match="expected 1 or more"):
        select_slots("all", 2, per_gpu=0)


def test_processes_sharing_a_gpu_without_mps_are_warned_about() -> None:
    shared, alone = select_slots("0,1", 2, per_gpu=2), select_slots("all", 2)
    control = mps_control({"CUDA_MPS_PIPE_DIRECTORY": "/run/mps"})
    assert control == Path("/run/mps/control")
    assert mps_control({}) == Path("/tmp/nvidia-mps/control")
    warning = mps_warning(shared, control, running=False)
    assert warning is not None and "GPU 0, 1" in warning and "nvidia-cuda-mps-control" in warning
    assert mps_warning(shared, control, running=True) is None
    assert mps_warning(alone, control, running=False) is None  # one process a GPU
    assert mps_warning(select_slots("cpu", 0, per_gpu=2), control, running=False) is None
