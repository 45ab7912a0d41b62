"""`make demo`: the default model explains the offline sample photos.

Writes, under ``demo-output/``, each photo's report (JSON, overlays, maps) for its top-3 classes with
Grad-CAM and CAM, a "photo | heatmap | overlay" panel of its top class, and one grid of everything.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import camlens
from camlens import render


def sample_photos(folder: Path) -> list[Path]:
    """The offline sample photos, written as files (so the demo runs the real file path)."""
    from matplotlib import cbook

    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as photo:
        arrays["grace_hopper"] = np.asarray(photo.convert("RGB"))
    try:
        from skimage import data

        for name in ["chelsea", "coffee", "astronaut", "rocket"]:
            arrays[name] = np.asarray(getattr(data, name)())
        arrays["motorcycle"] = np.asarray(data.stereo_motorcycle()[0])
    except ImportError:  # scikit-image comes with the dev extra, which `make demo` installs
        pass
    paths = []
    for name, array in arrays.items():
        path = folder / f"{name}.jpg"
        Image.fromarray(array).convert("RGB").save(path, quality=95)
        paths.append(path)
    return paths


def main(out: Path = Path("demo-output")) -> None:
    photos = sample_photos(out / "photos")
    model = camlens.load_model()
    start = time.perf_counter()
    with camlens.Explainer(model, method=["gradcam", "cam"]) as explainer:
        results = explainer.explain([str(p) for p in photos], top=3)
    seconds = time.perf_counter() - start
    for result in results:
        stem = Path(result.source).stem
        report = result.save(out / "explained", stem)
        render.save_png(result.panel(0), out / "panels" / f"{stem}.png")
        top = ", ".join(f"{p.label} {p.score:.2f}" for p in result.predictions[:3])
        print(f"{stem:16s} {top:60s} -> {report}")
    grid = render.save_png(camlens.grid(results), out / "grid.png")
    print(
        f"\n{len(results)} photos, 3 classes x 2 methods each, in {seconds:.1f} s on {model.device}"
    )
    print(f"overlays, maps and reports: {out / 'explained'}/")
    print(f"panels (photo | heatmap | overlay): {out / 'panels'}/")
    print(f"all in one picture: {grid}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("demo-output"))
