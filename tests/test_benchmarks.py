"""Smoke tests of the benchmark suite at toy size: the numbers are there and consistent.

No speed is asserted (speed is measured in a benchmark, never with a timed assertion); what can
fail is a broken code path, a missing number, or a ratio that is not the ratio of the numbers it
claims to compare.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import loader, models
from benchmarks.report import SECTION_TITLES, machine_info, to_markdown
from cxr_core.files import write_json

TINY_MODEL = "test_efficientnet"


@pytest.fixture(scope="module")
def loader_result() -> dict:
    settings = loader.LoaderSettings(images=8, size=64, source_side=128, batch_size=4, workers=2, repeats=2)
    return loader.run(settings, device="cpu")


@pytest.fixture(scope="module")
def models_result() -> dict:
    settings = models.ModelSettings(
        models=(TINY_MODEL,), size=64, batch_size=4, steps=1, repeats=2, compile="off", cache_images=8
    )
    return models.run(settings, device="cpu")


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def test_loader_reports_every_loader_and_true_ratios(loader_result: dict) -> None:
    loaders = loader_result["loaders"]
    assert set(loaders) == set(loader.LOADERS)
    for r in loaders.values():
        assert _positive(r["images_per_s_best"]) and _positive(r["images_per_s_median"])
        assert r["images_per_s_best"] >= r["images_per_s_median"]
        assert len(r["seconds"]) == 2
    paper = loaders["paper"]
    for name in ("cache", "cache_nchw", "cache_read"):
        for stat in ("best", "median"):
            expected = loaders[name][f"images_per_s_{stat}"] / paper[f"images_per_s_{stat}"]
            assert loaders[name][f"speedup_vs_paper_{stat}"] == pytest.approx(expected)
    assert loader_result["meets_target"] == (
        loaders["cache"]["speedup_vs_paper_best"] >= loader_result["target_speedup"]
    )


def test_paper_transform_gives_normalised_three_channel_images() -> None:
    from PIL import Image

    image = Image.new("L", (96, 96), color=128).convert("RGB")
    x = loader.paper_transform(32)(image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    # 128/255 normalised per ImageNet channel: the three channels differ
    assert len({round(float(c.mean()), 3) for c in x}) == 3


def test_models_reports_variants_and_true_ratios(models_result: dict) -> None:
    m = models_result["models"][TINY_MODEL]
    variants = m["variants"]
    for name in ("train_nchw", "train_cl", "train_loader", "infer_nchw", "infer_cl"):
        assert _positive(variants[name]["images_per_s_best"]), name
        assert _positive(variants[name]["images_per_s_median"]), name
    assert variants["train_loader"]["input"] == "cache loader"
    assert "train_compile" in m["skipped"] and "compile" in m["skipped"]["train_compile"]
    # CPU: training runs in float32, so the loader's baseline is the float32 step in the preferred format
    assert m["baselines"]["train"] == f"train_{m['preferred_memory_format']}"
    pairs = {
        "efficiency": ("train_loader", m["baselines"]["train"]),
        "channels_last_train": ("train_cl", "train_nchw"),
        "channels_last_infer": ("infer_cl", "infer_nchw"),
    }
    for key, (num, den) in pairs.items():
        for stat in ("best", "median"):
            expected = variants[num][f"images_per_s_{stat}"] / variants[den][f"images_per_s_{stat}"]
            assert m[key][stat] == pytest.approx(expected), key
    if "train_bf16" in variants:  # bf16 autocast runs on this CPU
        expected = (
            variants["train_bf16"]["images_per_s_best"]
            / variants[f"train_{m['preferred_memory_format']}"]["images_per_s_best"]
        )
        assert m["bf16_train"]["best"] == pytest.approx(expected)
    else:
        assert "train_bf16" in m["skipped"]
    assert m["meets_target"] == (m["efficiency"]["best"] >= models_result["target_efficiency"])


def test_models_rejects_unknown_names_before_timing() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        models.run(models.ModelSettings(models=("no_such_net",)), device="cpu")


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"{name} in the results JSON")


def test_markdown_and_json_cover_every_section_run(
    loader_result: dict, models_result: dict, tmp_path: Path
) -> None:
    results = {
        "command": "all",
        "quick": True,
        "started": "2026-01-01T00:00:00+00:00",
        "seconds": 1.0,
        "machine": machine_info(torch.device("cpu")),
        "note": "shared machine",
        "sections": {"loader": loader_result, "models": models_result},
    }
    md = to_markdown(results)
    for key in ("loader", "efficiency", "models"):
        assert f"## {SECTION_TITLES[key]}" in md, key
    for key in ("cams", "preprocess"):  # not run: not shown
        assert SECTION_TITLES[key] not in md
    assert TINY_MODEL in md and "| paper-style" in md
    speedup = loader_result["loaders"]["cache"]["speedup_vs_paper_best"]
    assert f"x{speedup:.2f}" in md
    assert results["machine"]["cpu"] in md
    assert "torch " + torch.__version__ in md
    write_json(tmp_path / "results.json", results)  # what `python -m benchmarks` writes
    json.loads((tmp_path / "results.json").read_text(), parse_constant=_refuse_constant)  # NaN -> null


def test_cams_and_preprocess_sections_render_from_their_run_results() -> None:
    """The report reads the dicts of benchmarks.cams.run and benchmarks.preprocess.run as they are."""
    from benchmarks import cams, preprocess

    cam = cams.run(model=TINY_MODEL, images=2, size=64, batch_size=2, repeats=1, include_pgc_all=False)
    pre = preprocess.run(images=2, workers=1, size=32, repeat=1)
    results = {
        "command": "all",
        "quick": True,
        "started": "2026-01-01T00:00:00+00:00",
        "seconds": 1.0,
        "machine": machine_info(torch.device("cpu")),
        "note": "shared machine",
        "sections": {"cams": cam, "preprocess": pre},
    }
    md = to_markdown(results)
    assert f"## {SECTION_TITLES['cams']}" in md and f"## {SECTION_TITLES['preprocess']}" in md
    assert f"x{cam['gradcam_speedup_min']:.2f}" in md  # the speed-up shown is the one measured
    ratio = pre["build_cache_images_per_s"] / pre["decode_only_images_per_s"]
    assert f"x{ratio:.2f}" in md


# --------------------------------------------------------------------------------------------
# the GPU check (benchmarks.gpu_check); the scale check's tests are in tests/test_scale.py


def test_gpu_check_refuses_without_cuda(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from benchmarks.__main__ import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(cli, ["gpu-check", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "needs a CUDA device" in result.output and "--allow-cpu" in result.output
    assert not list(tmp_path.iterdir())  # nothing written


def test_gpu_check_break_even_is_compile_time_over_saving_per_paper_step() -> None:
    from benchmarks import gpu_check

    # 0.1 s saved per step of 128 images -> 0.025 s per paper step of 32 -> 60 s pays back after 2400
    assert gpu_check.break_even_steps(60.0, 0.5, 0.4, 128) == pytest.approx(2400.0)
    assert gpu_check.break_even_steps(60.0, 0.4, 0.5, 128) == math.inf
    assert gpu_check.paper_run_steps() == 77_871 // 32 * 30


def test_gpu_check_cpu_smoke_run_writes_json_and_markdown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from benchmarks import gpu_check
    from benchmarks.__main__ import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(cli, ["gpu-check", "--allow-cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["smoke"] is True and doc["settings"]["size"] == 64
    m = doc["models"]["efficientnet_b0"]
    for variant in ("fp32", "bf16"):
        assert m[variant]["images_per_s"] > 0 and m[variant]["loss_finite"], variant
    assert m["bf16_speedup"] == pytest.approx(m["bf16"]["images_per_s"] / m["fp32"]["images_per_s"])
    timm_ref = gpu_check.TIMM_RTX3090["efficientnet_b0"]
    layout = m["timm_rtx3090"]["compared_layout"]
    assert m["vs_timm_rtx3090"] == pytest.approx(m["bf16"]["images_per_s"] / timm_ref[layout])
    p = doc["phantom_epoch"]
    assert p["epochs"] == 1 and p["train"] > 0 and p["test"] > 0
    assert all(p[k] >= 0 for k in ("phantom_s", "preprocess_s", "split_s", "train_epoch_s", "test_s"))
    md = (tmp_path / "gpu_check.md").read_text()
    assert "1752 (nhwc, 512)" in md and gpu_check.TIMM_SOURCE["nchw"][1][:12] in md
