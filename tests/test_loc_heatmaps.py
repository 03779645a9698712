"""The localisation set's heatmaps (cxr_core.explain.loc_heatmaps), what the CAM stage saves: independent of ``cam.batch_size``, and saved byte-reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_core.data.cache import load_cache
from cxr_core.data.tables import LocTable
from cxr_core.errors import ArtifactError
from cxr_core.explain.cams.settings import CamSettings
from cxr_core.explain.heatmap_file import SavedHeatmaps
from cxr_core.explain.loc_heatmaps import loc_heatmaps
from cxr_core.models.registry import create_model, get_spec
from cxr_core.runtime import Runtime

TINY = "test_resnet"
METHODS = ("GradCAM", "EigenCAM", "RandomCAM")


@pytest.fixture(scope="module")
def cams(phantom_data, single_thread):
    torch.manual_seed(0)
    model = create_model(TINY, image_size=phantom_data.image_size).eval()
    images, _ = load_cache(phantom_data.cache)
    loc = LocTable.read(phantom_data.splits)

    def run(batch_size: int, seed: int = 0) -> SavedHeatmaps:
        settings = CamSettings(METHODS, batch_size, seed, "pytorch-grad-cam", 32)
        return loc_heatmaps(model, get_spec(TINY), images, loc, settings, Runtime.cpu())

    return run, len(loc)


def test_no_map_depends_on_the_cam_batch_size(cams) -> None:
    run, k = cams
    assert k > 5, "the tiny phantom needs several boxes for this test"
    a, b = run(2), run(5)
    for method in METHODS:
        np.testing.assert_array_equal(a.maps[method], b.maps[method], err_msg=method)
        np.testing.assert_array_equal(a.degenerate[method], b.degenerate[method])


def test_random_control_is_seeded_per_box_position(cams) -> None:
    run, k = cams
    maps = run(3).maps["RandomCAM"]
    assert len({maps[i].tobytes() for i in range(k)}) == k  # every box gets its own map
    assert not np.array_equal(maps, run(3, seed=1).maps["RandomCAM"])


def test_saved_heatmaps_are_byte_identical_and_checked_on_load(cams, tmp_path) -> None:
    run, _ = cams
    saved = run(4)
    saved.save(tmp_path / "a.npz")
    saved.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    again = SavedHeatmaps.load(tmp_path / "a.npz")
    assert list(again.maps) == list(METHODS)
    np.testing.assert_array_equal(again.maps["GradCAM"], saved.maps["GradCAM"])
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ArtifactError, match=r"bad.npz: not a readable .npz archive.*cams@<model>"):
        SavedHeatmaps.load(tmp_path / "bad.npz")
    with pytest.raises(ArtifactError, match="not found; it is written by the CAM stage"):
        SavedHeatmaps.load(tmp_path / "none.npz")
