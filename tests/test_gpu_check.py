"""The GPU check's DDP scaling section, run on the CPU (gloo) where no GPU is lent.

The same worker the GPU run spawns (one process per GPU, DDP around the training step) runs here
as two CPU processes; the numbers mean nothing on a shared CPU, the code path and the arithmetic do.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from benchmarks import gpu_check


def test_efficiency_is_the_n_gpu_rate_over_n_times_the_one_gpu_rate() -> None:
    assert gpu_check.efficiency(100.0, 180.0, 2) == pytest.approx(0.9)
    assert gpu_check.efficiency(100.0, 400.0, 4) == pytest.approx(1.0)


def test_two_ddp_processes_train_together_and_report_one_rate(single_thread) -> None:
    s = dataclasses.replace(gpu_check.CheckSettings.smoke(), ddp_gpus=2)
    one = gpu_check.ddp_rate(s, "cpu", 1, batch=4)
    two = gpu_check.ddp_rate(s, "cpu", 2, batch=4)
    assert one["world_size"] == 1 and two["world_size"] == 2  # the processes really formed one job
    assert all(r["images_per_s"] > 0 and math.isfinite(r["images_per_s"]) for r in (one, two))


def test_ddp_scaling_needs_two_gpus_and_reports_each_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    s = gpu_check.CheckSettings()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    skipped = gpu_check._ddp_section(s, torch.device("cuda"), {})
    assert skipped == {"skipped": "1 GPU(s) visible: DDP scaling needs two or more"}
    assert "DDP scaling: 1 GPU(s) visible" in gpu_check._ddp_markdown(skipped)

    rates = {1: 500.0, 4: 1600.0}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(
        gpu_check,
        "ddp_rate",
        lambda _s, _d, world, batch: {"world_size": world, "images_per_s": rates[world]},
    )
    done = gpu_check._ddp_section(s, torch.device("cuda"), {"densenet121": {"batch": 64}})
    assert done == {
        "model": "densenet121", "per_gpu_batch": 64, "gpus": 4,
        "images_per_s_1": 500.0, "images_per_s_n": 1600.0, "efficiency": 0.8,
    }  # fmt: skip
    assert "efficiency 0.80" in gpu_check._ddp_markdown(done)
    assert gpu_check._ddp_section(dataclasses.replace(s, ddp_gpus=0), torch.device("cuda"), {})["skipped"]
