"""Decode rules (known answers per pixel format), bad files, and the cache build and reader."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from cxr_core.data.cache import CacheError, load_cache
from cxr_core.data.decode import ImageDecodeError, decode_image
from cxr_core.data.pool import chunk_bounds
from cxr_core.data.preprocess import build_cache

SRC = 64  # side of the test images
OUT = 32  # cache side


def halves(value: int = 255, dtype: type = np.uint8) -> np.ndarray:
    """Left half ``value``, right half 0."""
    arr = np.zeros((SRC, SRC), dtype=dtype)
    arr[:, : SRC // 2] = value
    return arr


def pattern() -> np.ndarray:
    """A deterministic, non-flat 8-bit image."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(SRC, SRC), dtype=np.uint8)


def save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    img.save(path, **kwargs)
    return path


def assert_halves(out: np.ndarray, high: int, tol: int = 0) -> None:
    """Left columns stay ``high``, right columns stay 0 (away from the edge)."""
    assert out.shape == (OUT, OUT) and out.dtype == np.uint8
    assert np.abs(out[:, : OUT // 2 - 2].astype(int) - high).max() <= tol
    assert out[:, OUT // 2 + 2 :].max() <= tol


# ------------------------------------------------------------------------------------------
# decode_image: one file, known answers


@pytest.mark.parametrize("value", [0, 77, 255])
def test_constant_l_image_keeps_its_value(tmp_path: Path, value: int) -> None:
    path = save(Image.new("L", (SRC, SRC), value), tmp_path / "c.png")
    out = decode_image(path, OUT)
    assert out.shape == (OUT, OUT) and out.dtype == np.uint8
    assert (out == value).all()


def test_half_white_image_keeps_its_halves(tmp_path: Path) -> None:
    assert_halves(decode_image(save(Image.fromarray(halves()), tmp_path / "h.png"), OUT), 255)


def test_image_already_at_size_is_unchanged(tmp_path: Path) -> None:
    arr = pattern()
    assert np.array_equal(decode_image(save(Image.fromarray(arr), tmp_path / "p.png"), SRC), arr)


def test_rgba_with_equal_channels_equals_the_grey_version(tmp_path: Path) -> None:
    grey = pattern()
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1)
    l_path = save(Image.fromarray(grey), tmp_path / "l.png")
    rgba_path = save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "rgba.png")
    assert Image.open(rgba_path).mode == "RGBA"
    assert np.array_equal(decode_image(rgba_path, OUT), decode_image(l_path, OUT))


def test_rgb_uses_luma(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (SRC, SRC), (200, 100, 50)), tmp_path / "rgb.png")
    expected = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)  # ITU-R 601, 124
    assert np.abs(decode_image(path, OUT).astype(int) - expected).max() <= 1
    grey = save(Image.fromarray(np.stack([halves()] * 3, axis=-1), mode="RGB"), tmp_path / "rgbh.png")
    assert_halves(decode_image(grey, OUT), 255)


@pytest.mark.parametrize(("value16", "value8"), [(65535, 255), (32896, 128), (257, 1), (0, 0)])
def test_16bit_png_scales_linearly(tmp_path: Path, value16: int, value8: int) -> None:
    path = save(Image.fromarray(np.full((SRC, SRC), value16, dtype=np.uint16)), tmp_path / "s.png")
    assert Image.open(path).mode.startswith("I")
    assert (decode_image(path, OUT) == value8).all()


def test_16bit_png_halves(tmp_path: Path) -> None:
    path = save(Image.fromarray(halves(65535, np.uint16)), tmp_path / "s.png")
    assert_halves(decode_image(path, OUT), 255)


def test_jpeg(tmp_path: Path) -> None:
    const = save(Image.new("L", (SRC, SRC), 90), tmp_path / "c.jpg", quality=95)
    assert np.abs(decode_image(const, OUT).astype(int) - 90).max() <= 1
    # 8x larger than the output: libjpeg's draft mode downscales during decoding
    big = np.zeros((8 * OUT, 8 * OUT), dtype=np.uint8)
    big[:, : 4 * OUT] = 255
    path = save(Image.fromarray(big).convert("RGB"), tmp_path / "big.jpg", quality=95)
    out = decode_image(path, OUT)
    assert out.shape == (OUT, OUT)
    assert out[:, : OUT // 2 - 2].min() >= 250 and out[:, OUT // 2 + 2 :].max() <= 5


def test_palette_1bit_and_la(tmp_path: Path) -> None:
    pal = Image.fromarray(np.where(halves() > 0, 1, 0).astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 180, 180, 180] + [0] * 762)
    p_path = save(pal, tmp_path / "p.png")
    assert Image.open(p_path).mode == "P"
    assert_halves(decode_image(p_path, OUT), 180)

    one = save(Image.fromarray(halves()).convert("1"), tmp_path / "one.png")
    assert Image.open(one).mode == "1"
    assert_halves(decode_image(one, OUT), 255)

    la = Image.merge("LA", [Image.fromarray(halves()), Image.new("L", (SRC, SRC), 128)])
    la_path = save(la, tmp_path / "la.png")
    assert Image.open(la_path).mode == "LA"
    assert_halves(decode_image(la_path, OUT), 255)


def make_bad_files(folder: Path) -> dict[str, Path]:
    """One of each kind of bad file, keyed by image name."""
    folder.mkdir(parents=True, exist_ok=True)
    good = save(Image.fromarray(pattern()), folder / "source.png")
    data = good.read_bytes()
    truncated = folder / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    no_iend = folder / "no_iend.png"
    no_iend.write_bytes(data[:-12])  # pixel data complete, IEND chunk missing: Pillow alone accepts it
    text = folder / "text.png"
    text.write_text("this is not an image\n")
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    return {
        "missing.png": folder / "missing.png",
        "truncated.png": truncated,
        "no_iend.png": no_iend,
        "text.png": text,
        "empty.png": empty,
    }


@pytest.mark.parametrize("name", ["missing.png", "truncated.png", "no_iend.png", "text.png", "empty.png"])
def test_bad_file_raises_naming_the_file(tmp_path: Path, name: str) -> None:
    path = make_bad_files(tmp_path)[name]
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path, OUT)
    assert str(path) in str(info.value) and info.value.path == path


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    path = save(Image.fromarray(pattern()), tmp_path / "a.jpg")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="a.jpg"):
        decode_image(path, OUT)


def test_load_truncated_images_must_stay_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.fromarray(pattern()), tmp_path / "a.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(path, OUT)


# ------------------------------------------------------------------------------------------
# build_cache / load_cache


def make_good_files(folder: Path, n: int) -> tuple[list[str], list[Path]]:
    """``n`` distinct small PNGs (image k has constant value 10 * k + 5, so rows are identifiable)."""
    folder.mkdir(parents=True, exist_ok=True)
    names, paths = [], []
    for k in range(n):
        name = f"{k:08d}_000.png"
        names.append(name)
        paths.append(save(Image.new("L", (SRC, SRC), 10 * k + 5), folder / name))
    return names, paths


def mixed_inputs(tmp_path: Path, n_good: int = 6) -> tuple[list[str], list[Path], list[str]]:
    """Good files with every kind of bad file interleaved; returns names, paths, bad names."""
    names, paths = make_good_files(tmp_path / "raw", n_good)
    bad = make_bad_files(tmp_path / "raw")
    for pos, (name, path) in zip([1, 2, 4, 5, 7], bad.items(), strict=True):
        names.insert(pos, name)
        paths.insert(pos, path)
    return names, paths, list(bad)


def test_build_and_load_round_trip(tmp_path: Path) -> None:
    names, paths = make_good_files(tmp_path / "raw", 5)
    report = build_cache(
        names, paths, tmp_path / "cache", size=OUT, workers=1, on_error="fail", progress=False
    )
    assert report.decoded == 5 and report.skipped == []
    images, index = load_cache(tmp_path / "cache", expected_size=OUT)
    assert isinstance(images, np.memmap) and images.shape == (5, OUT, OUT) and images.dtype == np.uint8
    assert index["image"].tolist() == names and index["row"].tolist() == list(range(5))
    for k in range(5):
        assert (images[k] == 10 * k + 5).all()
    assert json.loads((tmp_path / "cache" / "report.json").read_text()) == {
        "image_size": OUT,
        "decoded": 5,
        "skipped": [],
    }
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "images.npy",
        "index.csv",
        "report.json",
    ]


def test_fail_names_every_bad_file_and_writes_no_cache(tmp_path: Path) -> None:
    names, paths, bad = mixed_inputs(tmp_path)
    out = tmp_path / "cache"
    with pytest.raises(CacheError) as info:
        build_cache(names, paths, out, size=OUT, workers=1, on_error="fail", progress=False)
    message = str(info.value)
    for name in bad:
        assert name in message
    assert "5 of 11" in message
    assert not (out / "images.npy").exists() and not (out / "index.csv").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed"
    assert [s["image"] for s in report["skipped"]] == bad  # input order
    assert all(s["path"] and s["error"] for s in report["skipped"])
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]  # no temporary files left


def test_fail_message_lists_first_files_and_the_total(tmp_path: Path) -> None:
    names, paths = make_good_files(tmp_path / "raw", 1)
    names += [f"gone_{k:02d}.png" for k in range(25)]
    paths += [tmp_path / "raw" / n for n in names[1:]]
    with pytest.raises(CacheError, match=r"(?s)25 of 26 .*and 5 more"):
        build_cache(names, paths, tmp_path / "cache", size=OUT, workers=1, on_error="fail", progress=False)
    assert len(json.loads((tmp_path / "cache" / "report.json").read_text())["skipped"]) == 25


def test_skip_leaves_bad_files_out_in_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    names, paths, bad = mixed_inputs(tmp_path)
    with caplog.at_level(logging.WARNING, logger="cxr_core.data.preprocess"):
        report = build_cache(
            names, paths, tmp_path / "cache", size=OUT, workers=1, on_error="skip", progress=False
        )
    good = [n for n in names if n not in bad]
    assert report.decoded == len(good) == 6
    assert [s.image for s in report.skipped] == bad
    images, index = load_cache(tmp_path / "cache")
    assert index["image"].tolist() == good
    for row, name in enumerate(good):
        assert np.array_equal(images[row], decode_image(paths[names.index(name)], OUT))
    on_disk = json.loads((tmp_path / "cache" / "report.json").read_text())
    assert on_disk["decoded"] == 6 and [s["image"] for s in on_disk["skipped"]] == bad
    assert set(on_disk["skipped"][0]) == {"image", "path", "error"}
    for name in bad:  # never a silent drop
        assert name in caplog.text


def test_all_bad_in_skip_mode_is_an_error(tmp_path: Path) -> None:
    bad = make_bad_files(tmp_path / "raw")
    with pytest.raises(CacheError, match="No image could be decoded"):
        build_cache(list(bad), list(bad.values()), tmp_path / "cache", size=OUT, workers=1, on_error="skip")
    assert not (tmp_path / "cache" / "images.npy").exists()


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_two_workers_give_a_byte_identical_cache(tmp_path: Path, on_error: str) -> None:
    names, paths, bad = mixed_inputs(tmp_path, n_good=14)
    if on_error == "fail":
        names = [n for n in names if n not in bad]
        paths = [p for p in paths if p.name in names]
    caches = []
    for workers in (1, 2):
        out = tmp_path / f"cache{workers}"
        build_cache(
            names, paths, out, size=OUT, workers=workers, on_error=on_error, chunk_size=3, progress=False
        )
        caches.append(out)
    for name in ("images.npy", "index.csv", "report.json"):
        assert (caches[0] / name).read_bytes() == (caches[1] / name).read_bytes(), name


def test_existing_cache_survives_a_failed_rebuild(tmp_path: Path) -> None:
    names, paths = make_good_files(tmp_path / "raw", 4)
    out = tmp_path / "cache"
    build_cache(names, paths, out, size=OUT, workers=1, on_error="fail", progress=False)
    before = {n: (out / n).read_bytes() for n in ("images.npy", "index.csv")}
    bad = make_bad_files(tmp_path / "raw")
    with pytest.raises(CacheError, match="unchanged"):
        build_cache(
            names + ["truncated.png"],
            paths + [bad["truncated.png"]],
            out,
            size=OUT,
            workers=2,
            on_error="fail",
        )
    assert {n: (out / n).read_bytes() for n in before} == before
    images, index = load_cache(out)
    assert len(index) == images.shape[0] == 4


def test_build_cache_rejects_bad_arguments(tmp_path: Path) -> None:
    names, paths = make_good_files(tmp_path / "raw", 2)
    with pytest.raises(ValueError, match="2 image names but 1 paths"):
        build_cache(names, paths[:1], tmp_path / "c", size=OUT, workers=1, on_error="fail")
    with pytest.raises(ValueError, match="listed twice"):
        build_cache([names[0]] * 2, paths, tmp_path / "c", size=OUT, workers=1, on_error="fail")
    with pytest.raises(ValueError, match="on_error"):
        build_cache(names, paths, tmp_path / "c", size=OUT, workers=1, on_error="ignore")  # type: ignore[arg-type]


def test_load_cache_errors(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="images.npy, index.csv missing"):
        load_cache(tmp_path / "nowhere")
    names, paths = make_good_files(tmp_path / "raw", 3)
    out = tmp_path / "cache"
    build_cache(names, paths, out, size=OUT, workers=1, on_error="fail", progress=False)
    with pytest.raises(CacheError, match="image_size is 224"):
        load_cache(out, expected_size=224)
    pd.DataFrame({"row": range(4), "image": names + ["extra.png"]}).to_csv(out / "index.csv", index=False)
    with pytest.raises(CacheError, match="does not match"):
        load_cache(out)


@pytest.mark.parametrize(("n", "workers", "chunk"), [(1, 2, 64), (200, 2, 64), (100_000, 2, 64), (10, 1, 3)])
def test_chunk_bounds_cover_every_image_once(n: int, workers: int, chunk: int) -> None:
    bounds = chunk_bounds(n, workers, chunk)
    covered = np.concatenate([np.arange(a, b) for a, b in bounds])
    assert np.array_equal(covered, np.arange(n))
    assert max(b - a for a, b in bounds) <= chunk
    assert len(bounds) >= min(n, 4 * workers)  # enough chunks to keep every worker busy
