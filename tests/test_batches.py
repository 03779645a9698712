"""cxr_core.data.batches: device-side augmentation and normalisation, and memmap batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_core.data.batches import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CacheBatches,
    augment,
    flip_rotate,
    normalise,
    prepare_batch,
    to_device,
)

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _asymmetric(b: int = 2, h: int = 5, w: int = 7) -> torch.Tensor:
    return torch.arange(b * h * w, dtype=torch.float32).view(b, 1, h, w) % 251


def test_flip_alone_is_exact() -> None:
    x = _asymmetric()
    out = flip_rotate(x, torch.tensor([True, False]), torch.zeros(2))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


@pytest.mark.parametrize(("angle", "k"), [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_rotation_matches_rot90_on_an_odd_size_image(angle: float, k: int) -> None:
    x = _asymmetric(1, 9, 9)
    out = flip_rotate(x, torch.tensor([False]), torch.tensor([angle]))
    expected = torch.rot90(x, k, dims=(-2, -1))
    # pixel centres map onto pixel centres; only float error in cos/sin (~1e-7 of a pixel) remains
    torch.testing.assert_close(out[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-3, rtol=0)
    torch.testing.assert_close(out, expected, atol=0.05, rtol=0)  # edges: a hair of zero padding


def test_flip_then_rotate_order() -> None:
    x = _asymmetric(1, 9, 9)
    out = flip_rotate(x, torch.tensor([True]), torch.tensor([90.0]))
    torch.testing.assert_close(out, torch.rot90(x.flip(-1), 1, dims=(-2, -1)), atol=0.05, rtol=0)


def test_rotation_pads_with_zeros_about_the_centre() -> None:
    x = torch.full((1, 1, 33, 33), 255.0)
    out = flip_rotate(x, torch.tensor([False]), torch.tensor([15.0]))
    assert out[0, 0, 0, 0] == 0 and out[0, 0, -1, -1] == 0  # corners rotated out
    assert out[0, 0, 16, 16] == pytest.approx(255.0)  # the centre stays


def test_probability_zero_leaves_images_unchanged() -> None:
    x = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(0), hflip_p=0.0, rotate_p=0.0)
    assert out.dtype == torch.float32 and torch.equal(out, x.float())


def test_probability_one_flips_every_image() -> None:
    x = _asymmetric(4)
    out = augment(x, torch.Generator().manual_seed(0), hflip_p=1.0, rotate_p=0.0)
    assert torch.equal(out, x.flip(-1))


def test_about_half_the_images_are_flipped() -> None:
    x = _asymmetric(400, 3, 3)
    out = augment(x, torch.Generator().manual_seed(0), hflip_p=0.5, rotate_p=0.0)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert 150 < int(flipped.sum()) < 250


def test_same_seed_same_output_different_seed_different() -> None:
    x = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    first = augment(x, torch.Generator().manual_seed(7))
    assert torch.equal(first, augment(x, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, augment(x, torch.Generator().manual_seed(8)))


def test_bad_augment_values_name_the_key() -> None:
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"train.augment.hflip_p = 1.5"):
        augment(x, None, hflip_p=1.5)
    with pytest.raises(ValueError, match=r"train.augment.max_degrees = -1"):
        augment(x, None, max_degrees=-1.0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalise_known_answer(channels_last: bool) -> None:
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(2, 1, 3, 2)
    out = normalise(x, channels_last=channels_last)
    assert out.shape == (2, 3, 3, 2) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for c, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)):
        assert out[:, c, :, 0].unique().item() == pytest.approx((0.0 - mean) / std, rel=1e-6)  # pixel 0
        assert out[:, c, :, 1].unique().item() == pytest.approx((1.0 - mean) / std, rel=1e-6)  # pixel 255
    assert out[0, 0, 0, 0].item() == pytest.approx(-2.117904, abs=1e-6)  # -0.485 / 0.229
    assert out[0, 2, 0, 1].item() == pytest.approx(2.64, abs=1e-6)  # (1 - 0.406) / 0.225


def test_normalise_to_bfloat16() -> None:
    out = normalise(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("device", DEVICES)
def test_prepare_batch(device: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    moved = to_device(images, device)
    assert moved.device.type == device and torch.equal(moved.cpu(), torch.from_numpy(images))
    plain = prepare_batch(images, device, train=False, channels_last=True)
    assert plain.shape == (3, 3, 8, 8) and plain.device.type == device
    torch.testing.assert_close(plain.cpu(), normalise(torch.from_numpy(images)))
    first = prepare_batch(images, device, train=True, generator=torch.Generator().manual_seed(1))
    again = prepare_batch(images, device, train=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and not torch.equal(first, plain)


# --- CacheBatches --------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path) -> np.ndarray:
    """A 23-row memmap cache whose image i is filled with the value i."""
    images = np.repeat(np.arange(23, dtype=np.uint8), 16).reshape(23, 4, 4)
    np.save(tmp_path / "images.npy", images)
    return np.load(tmp_path / "images.npy", mmap_mode="r")


def _rows_and_labels(n: int = 17) -> tuple[np.ndarray, np.ndarray]:
    rows = np.random.default_rng(3).permutation(23)[:n]  # unsorted, as a split table's rows are
    labels = np.zeros((n, 14), dtype=np.uint8)
    labels[:, 0] = rows  # label column 0 carries the row, to check images and labels stay paired
    return rows, labels


def _seen(batches: CacheBatches) -> list[int]:
    seen = []
    for images, labels in batches:
        assert images.dtype == torch.uint8 and labels.dtype == torch.float32 and labels.shape[1] == 14
        assert torch.equal(images[:, 0, 0].float(), labels[:, 0])  # each image with its own labels
        seen += images[:, 0, 0].tolist()
    return seen


def test_cache_batches_cover_every_row_once_per_epoch(cache) -> None:
    rows, labels = _rows_and_labels()
    batches = CacheBatches(cache, rows, labels, batch_size=5, shuffle=True, seed=0)
    assert len(batches) == 4
    epoch0 = _seen(batches)
    assert sorted(epoch0) == sorted(rows.tolist())
    assert epoch0 == _seen(batches)  # same epoch, same order
    batches.set_epoch(1)
    epoch1 = _seen(batches)
    assert sorted(epoch1) == sorted(rows.tolist()) and epoch1 != epoch0


def test_cache_batches_keep_the_given_order_without_shuffle(cache) -> None:
    rows, labels = _rows_and_labels()
    assert _seen(CacheBatches(cache, rows, labels, batch_size=4)) == rows.tolist()
    assert len(_seen(CacheBatches(cache, rows, labels, batch_size=4, drop_last=True))) == 16


@pytest.mark.parametrize("n", [16, 17])
def test_distributed_shards_are_disjoint_equal_and_cover_everything(cache, n: int) -> None:
    rows, labels = _rows_and_labels(n)
    shards = [
        _seen(
            CacheBatches(
                cache, rows, labels, batch_size=3, shuffle=True, seed=5, epoch=2, rank=r, world_size=2
            )
        )
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == -(-n // 2)
    assert set(shards[0]) | set(shards[1]) == set(rows.tolist())
    overlap = len(shards[0]) + len(shards[1]) - n  # the DistributedSampler-style pad
    assert overlap == n % 2 and len(set(shards[0]) & set(shards[1])) == overlap


def test_cache_batches_reject_bad_input(cache) -> None:
    rows, labels = _rows_and_labels()
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 23\)"):
        CacheBatches(cache, [0, 23], labels[:2], batch_size=2)
    with pytest.raises(ValueError, match="labels has 2 rows but rows has 17"):
        CacheBatches(cache, rows, labels[:2], batch_size=2)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        CacheBatches(cache, rows, labels, batch_size=2, rank=2, world_size=2)
