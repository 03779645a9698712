"""Heatmap overlays: a CAM blended over the X-ray, with the radiologists' boxes drawn on top.

A saved overlay also carries its caption (finding, probability, model, method, a phantom warning)
in a band above the image and in the PNG's text chunks, so a copied file is never unlabelled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

#: Side of the overlays the demo shows and ``cxr predict --heatmaps`` writes by default.
DISPLAY_PX = 512


def overlay(
    grey: np.ndarray,
    heatmap: np.ndarray | None,
    *,
    alpha: float = 0.45,
    boxes: Sequence[tuple[float, float, float, float, str]] = (),
    box_scale: float = 1.0,
    colormap: str = "jet",
) -> np.ndarray:
    """RGB uint8 of ``grey`` with ``heatmap`` (any size, values in [0, 1]) blended on top, plus boxes.

    ``boxes`` are ``(x, y, w, h, label)`` multiplied by ``box_scale`` (e.g. display size / S), drawn
    as green outlines so the radiologist's box can be compared with the map.
    """
    import matplotlib

    grey = np.asarray(grey, dtype=np.uint8)
    h, w = grey.shape
    rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=2)
    if heatmap is not None:
        hm = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
        if hm.shape != (h, w):
            hm = np.asarray(Image.fromarray(hm).resize((w, h), Image.Resampling.BILINEAR))
        colours = matplotlib.colormaps[colormap](np.clip(hm, 0.0, 1.0))[..., :3].astype(np.float32) * 255.0
        rgb = (1.0 - alpha) * rgb + alpha * colours
    image = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    if boxes:
        draw = ImageDraw.Draw(image)
        line = max(2, round(min(h, w) / 200))
        font_px = max(10, round(min(h, w) / 32))
        font = ImageFont.load_default(size=font_px)
        for x, y, bw, bh, label in boxes:
            x0, y0, x1, y1 = (v * box_scale for v in (x, y, x + bw, y + bh))
            draw.rectangle((x0, y0, x1, y1), outline=(0, 255, 0), width=line)
            ty = y0 - font_px - 2 * line if y0 >= font_px + 2 * line else y1 + line
            draw.text((x0, ty), label, fill=(0, 255, 0), font=font)
    return np.asarray(image)


#: Colours of the caption band: plain lines, and the phantom warning.
CAPTION_TEXT = (255, 255, 255)
WARNING_TEXT = (255, 90, 90)


def captioned(rgb: np.ndarray, lines: Sequence[str], warning: str | None = None) -> np.ndarray:
    """``rgb`` below a black band holding ``lines`` (and ``warning`` in red, first); the image is untouched.

    A band, not text over the image: the apices, where a pneumothorax is, stay visible.
    """
    rgb = np.asarray(rgb, dtype=np.uint8)
    width = rgb.shape[1]
    font_px = max(10, round(width / 32))
    font = ImageFont.load_default(size=font_px)
    rows = ([(warning, WARNING_TEXT)] if warning else []) + [(line, CAPTION_TEXT) for line in lines]
    pad = max(2, font_px // 4)
    band = Image.new("RGB", (width, len(rows) * (font_px + pad) + pad), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    for i, (text, colour) in enumerate(rows):
        draw.text((pad, pad + i * (font_px + pad)), text, fill=colour, font=font)
    return np.concatenate([np.asarray(band), rgb], axis=0)


def save_overlay(path: Path, rgb: np.ndarray, caption: Mapping[str, str]) -> None:
    """Write ``rgb`` as a PNG whose text chunks hold ``caption`` (``Image.open(path).text`` reads them)."""
    info = PngInfo()
    for key, value in caption.items():
        info.add_text(key, value)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path, pnginfo=info)
