"""The phantom ChestX-ray14: official layout and quirks, and its known answers."""

from pathlib import Path

import numpy as np
import pytest
from conftest import phantom_config
from PIL import Image

from cxr_core.data import metadata as md
from cxr_core.data.sources.phantom import (
    BBOX_HEADER,
    DATA_ENTRY_HEADER,
    ImageSpec,
    PhantomConfig,
    generate,
    plan,
    prevalences,
    render,
)
from cxr_core.labels import BOX_LABELS, LABELS, REAL_COUNTS


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[PhantomConfig, Path]:
    cfg = phantom_config(images=70, image_px=256, seed=3, rgba_fraction=0.1, prevalence_floor=0.15, workers=2)
    raw = tmp_path_factory.mktemp("raw")
    generate(cfg, raw, progress=False)
    return cfg, raw


def test_official_layout_and_quirks(phantom):
    cfg, raw = phantom
    names = sorted(p.name for p in (raw / "images").iterdir())
    assert len(names) == cfg.images and all(len(n) == len("00000001_000.png") for n in names)
    modes = {Image.open(raw / "images" / n).mode for n in names}
    assert modes == {"L", "RGBA"}
    assert Image.open(raw / "images" / names[0]).size == (cfg.image_px, cfg.image_px)

    entry_text = (raw / md.DATA_ENTRY).read_text()
    assert entry_text.splitlines()[0] == DATA_ENTRY_HEADER
    entry = md.read_data_entry(raw / md.DATA_ENTRY)
    assert sorted(entry["image"]) == names
    in_file_order = [line.split(",")[0] for line in entry_text.splitlines()[1:]]
    assert in_file_order != sorted(in_file_order)  # rows are not sorted, as in NIH's file
    assert entry["patient"].value_counts().max() > 1  # follow-ups

    bbox_lines = (raw / md.BBOX_LIST).read_text().splitlines()
    assert bbox_lines[0] == BBOX_HEADER
    assert all(len(line.split(",")) == 6 for line in bbox_lines[1:])
    assert "Infiltration" not in (raw / md.BBOX_LIST).read_text()

    for name in (md.TRAIN_VAL_LIST, md.TEST_LIST):
        assert not (raw / name).read_text().endswith("\n")


def test_lists_are_patient_disjoint_and_cover_everything(phantom):
    cfg, raw = phantom
    train_val = md.read_image_list(raw / md.TRAIN_VAL_LIST)
    test = md.read_image_list(raw / md.TEST_LIST)
    assert len(train_val) + len(test) == cfg.images and not set(train_val) & set(test)
    assert not {n[:8] for n in train_val} & {n[:8] for n in test}


def test_boxes_only_for_test_positives_and_inside_the_image(phantom):
    _, raw = phantom
    boxes = md.read_bbox_list(raw / md.BBOX_LIST)
    entry = md.read_data_entry(raw / md.DATA_ENTRY).set_index("image")
    test = set(md.read_image_list(raw / md.TEST_LIST))
    assert len(boxes) > 5
    assert set(boxes["image"]) <= test
    for row in boxes.itertuples():
        assert entry.loc[row.image, row.label] == 1
        assert row.x >= 0 and row.y >= 0 and row.w > 0 and row.h > 0
        assert row.x + row.w <= md.BOX_SPACE + 1e-9 and row.y + row.h <= md.BOX_SPACE + 1e-9
    assert not boxes.duplicated(["image", "label"]).any()


def test_generation_is_deterministic(phantom, tmp_path):
    cfg, raw = phantom
    small = PhantomConfig(**{**cfg.__dict__, "images": 12, "workers": 1})
    a, b = tmp_path / "a", tmp_path / "b"
    generate(small, a, progress=False)
    generate(small, b, progress=False)
    for name in (md.DATA_ENTRY, md.BBOX_LIST, md.TEST_LIST):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    first = sorted((a / "images").iterdir())[0].name
    assert np.array_equal(
        np.asarray(Image.open(a / "images" / first)), np.asarray(Image.open(b / "images" / first))
    )


@pytest.mark.parametrize("label", LABELS)
def test_every_sign_is_drawn_and_its_box_covers_it(label):
    """Known answer: the pixels a sign changes all lie inside its recorded box."""
    labels = np.ones(len(LABELS), dtype=np.uint8)  # all signs at once: overlaps must not break boxes
    spec = ImageSpec("x.png", labels, seed=11)
    px = 512
    full = render(spec, px)
    without = render(spec, px, omit=label)
    diff = np.abs(full.pixels.astype(int) - without.pixels.astype(int))
    assert diff.max() >= 20, f"{label}: sign is not visible"
    x0, y0, x1, y1 = full.boxes[label]
    assert 0 <= x0 < x1 <= px and 0 <= y0 < y1 <= px
    outside = diff.copy()
    outside[y0:y1, x0:x1] = 0
    assert outside.max() == 0, f"{label}: sign changes pixels outside its box"


def test_box_signs_are_localised():
    """The 8 box findings cover a small part of the image; their boxes are what the localisation set scores."""
    spec = ImageSpec("x.png", np.ones(len(LABELS), dtype=np.uint8), seed=5)
    boxes = render(spec, 256).boxes
    for label in BOX_LABELS:
        x0, y0, x1, y1 = boxes[label]
        assert (x1 - x0) * (y1 - y0) < 0.2 * 256 * 256, label


def test_prevalences_follow_the_real_shape():
    floor = 0.08
    prev = prevalences(floor)
    assert prev.min() == pytest.approx(floor)
    above = [i for i, name in enumerate(LABELS) if REAL_COUNTS[name] / 112120 > floor]
    assert above and all(prev[i] == pytest.approx(REAL_COUNTS[LABELS[i]] / 112120) for i in above)
    the_plan = plan(phantom_config(images=6000, prevalence_floor=floor, seed=0))
    observed = np.stack([s.labels for s in the_plan.specs]).mean(axis=0)
    np.testing.assert_allclose(observed, prev, rtol=0.25)
    assert np.argmax(observed) == LABELS.index("Infiltration")
