"""NIH-format test X-rays with real images' fine structure, and the model card's recipe run as a user runs it.

The phantom's smooth drawings hide resize differences: two bilinear resizes of a smooth image
agree to a grey level or two. Real radiographs have grain, wires, rib edges and bone texture at
every scale, and there the pipeline's resize (``reducing_gap=2.0``) and timm's exact one differ by
10+ grey levels. :func:`textured` draws that kind of image, seeded: a 1/f-like random field down to
2 px, hard-edged blocks, 1-3 px bright lines and film grain.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

NIH_PX = 1024


def textured(seed: int, px: int = NIH_PX) -> np.ndarray:
    """A ``px x px`` uint8 image with a radiograph's mix of smooth, sharp and fine structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:px, 0:px].astype(np.float32) / px
    img = 100 + 70 * np.exp(-((x - 0.5) ** 2 + (y - 0.55) ** 2) * 5)  # bright mediastinum
    for cells in (8, 16, 32, 64, 128, 256, 512):  # random field at every scale down to 2 px
        field = Image.fromarray(rng.normal(0, 1, (cells, cells)).astype(np.float32))
        img += 14 * (64 / cells) ** 0.3 * np.asarray(field.resize((px, px), Image.Resampling.BICUBIC))
    for _ in range(10):  # hard-edged blocks
        x0, y0 = rng.random(2) * 0.8
        w, h = 0.05 + rng.random(2) * 0.3
        img[(x > x0) & (x < x0 + w) & (y > y0) & (y < y0 + h)] += rng.uniform(-50, 50)
    for _ in range(25):  # 1-3 px bright lines: wires, cortical edges
        at, width = int(rng.integers(0, px - 4)), int(rng.integers(1, 4))
        if rng.random() < 0.5:
            img[:, at : at + width] = 245
        else:
            img[at : at + width, :] = 245
    img += rng.normal(0, 12, (px, px))  # film grain
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_nih_like_images(folder: Path) -> list[Path]:
    """Five 1024 px files in the formats ``cxr predict`` reads: 8-bit grey PNGs (NIH's own format),
    an RGBA PNG with R = G = B, a 16-bit grey PNG and a grey JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in (0, 1):
        paths.append(folder / f"grey8_{seed}.png")
        Image.fromarray(textured(seed)).save(paths[-1])
    grey = textured(2)
    paths.append(folder / "rgba.png")
    Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)])).save(paths[-1])
    fine = np.random.default_rng(3).integers(0, 257, grey.shape, dtype=np.uint16)  # below 8-bit steps
    paths.append(folder / "grey16.png")
    Image.fromarray(textured(3).astype(np.uint16) * 257 + fine).save(paths[-1])  # mode I;16
    paths.append(folder / "grey.jpg")
    Image.fromarray(textured(4)).save(paths[-1], quality=95)
    return paths


def card_recipe(card: str, folder: Path, files: Sequence[Path], placeholders: tuple[str, str]) -> str:
    """The card's first python block with its folder and file placeholders replaced (each once)."""
    found = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert found, "the model card has no python code block"
    code = found[0]
    folder_text, image_text = (json.dumps(p) for p in placeholders)
    assert code.count(folder_text) == 1 and code.count(f"[{image_text}]") == 1, code
    code = code.replace(folder_text, json.dumps(str(folder)))
    return code.replace(f"[{image_text}]", json.dumps([str(f) for f in files]))


def run_recipe(code: str, cwd: Path) -> dict[str, list[float]]:
    """Run recipe code in a fresh interpreter, with ``cxr_core`` unimportable and no network.

    Returns file -> its 14 probabilities, parsed from the ``<file> <json>`` lines it prints.
    """
    blocker = "import sys\nsys.modules['cxr_core'] = None  # the export must work without the pipeline\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", blocker + code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    rows = (line.split(" ", 1) for line in done.stdout.splitlines() if line.strip())
    return {name: list(json.loads(doc).values()) for name, doc in rows}
