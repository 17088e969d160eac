"""The hardware line of benchmark reports: one process, a multi-process job, the CPU's name."""

from __future__ import annotations

import os

import torch

from biglittle_sam.runtime import hardware
from biglittle_sam.runtime.hardware import cpu_name, hardware_description


def test_one_process_names_the_cpu_cores_and_torch_threads() -> None:
    line = hardware_description("cpu")
    assert line == f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def test_a_job_names_its_processes_threads_and_torch() -> None:
    line = hardware_description("cpu", processes=2, threads=1)
    assert line == (
        f"{cpu_name()}, {os.cpu_count()} logical CPUs; 2 process(es) x 1 thread(s); "
        f"torch {torch.__version__}"
    )


def test_cpu_name_falls_back_to_platform_without_cpuinfo(monkeypatch) -> None:
    def no_file(self, *args, **kwargs):
        raise FileNotFoundError("no /proc/cpuinfo here")

    monkeypatch.setattr(hardware.Path, "read_text", no_file)
    monkeypatch.setattr(hardware.platform, "processor", lambda: "")
    monkeypatch.setattr(hardware.platform, "machine", lambda: "riscv64")
    assert cpu_name() == "riscv64"


def test_a_cuda_device_is_described_by_its_name(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"GPU of {device}")
    assert hardware_description("cuda:0") == "GPU of cuda:0"
    assert hardware_description("cuda", processes=2, threads=1) == "GPU of cuda"
