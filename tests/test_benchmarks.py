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
