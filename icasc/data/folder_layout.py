"""The layout of a folder of images: which folders hold the classes, the class names, the image files.

Two layouts, told apart by the folder names under ``data.root`` (:data:`LAYOUTS`)::

    root/train/<class>/*   root/val/<class>/*   (optional root/test/<class>/*)    the splits as given
    root/<class>/*                                                               one folder, split here

Pure functions over the file system, used by :class:`~icasc.data.image_folder.ImageFolderDataModule` and by
the ``${icasc_image_folder_classes:<root>}`` resolver of ``conf/data/image_folder.yaml``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image

from icasc.data.base import check_root, check_root_exists
from icasc.data.images import IMAGE_SUFFIXES

__all__ = [
    "LAYOUTS",
    "ROOT_HINT",
    "SPLITS",
    "count_image_folder_classes",
    "find_split_folders",
    "image_folder_classes",
    "list_class_images",
    "split_per_class",
    "unreadable_images",
]

SPLITS = ("train", "val", "test")
LAYOUTS = (
    "root/train/<class>/* and root/val/<class>/* (optionally root/test/<class>/*), or root/<class>/* "
    "(one folder per class, split at random with data.val_fraction and data.test_fraction)"
)
ROOT_HINT = f"set data.root to the folder of your images, laid out as {LAYOUTS}"


def _visible_dirs(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _loose_images(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(
            e.name for e in entries if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
        )


def find_split_folders(root: str | Path) -> dict[str, Path]:
    """The folders holding class folders: ``{"train", "val"[, "test"]: root/<split>}`` or ``{"all": root}``.

    Raises:
        ValueError: ``data.root`` is unset, the layout is neither of the two (split folders beside other
            folders, ``train/`` without ``val/``, images outside class folders, no folders at all).
        FileNotFoundError: ``data.root`` does not exist.
    """
    root = check_root(root, ROOT_HINT)
    check_root_exists(root, "the image folder", f"Set data.root to the folder of your images: {LAYOUTS}")
    dirs, loose = _visible_dirs(root), _loose_images(root)
    named = [d for d in dirs if d in SPLITS]
    if named:
        others = [d for d in dirs if d not in SPLITS]
        if others or not {"train", "val"} <= set(named):
            lacking = [s for s in ("train", "val") if s not in named]
            raise ValueError(
                f"data.root={root} mixes split folders ({', '.join(named)}) with "
                f"{'class folders ' + ', '.join(others[:5]) if others else 'no ' + '/'.join(lacking) + '/'}: "
                f"expected {LAYOUTS}. Rename the folders so one layout holds"
            )
    if loose or not dirs:
        what = (
            f"holds {len(loose)} image(s) outside class folders (e.g. {loose[0]})"
            if loose
            else "has no folders"
        )
        raise ValueError(
            f"data.root={root} {what}: expected {LAYOUTS}; move each image into its class folder"
        )
    return {s: root / s for s in SPLITS if s in named} if named else {"all": root}


def image_folder_classes(root: str | Path) -> list[str]:
    """The sorted class folder names under ``root``, checked to be the same in every split.

    Raises:
        ValueError: See :func:`find_split_folders`; a split folder without class folders or with only one, or
            splits whose class folders differ (naming the classes found in one only).
    """
    folders = find_split_folders(root)
    classes = {}
    for split, folder in folders.items():
        classes[split] = _visible_dirs(folder)
        if not classes[split]:
            raise ValueError(f"{folder} holds no class folders: expected {LAYOUTS}")
    first, names = next(iter(classes)), next(iter(classes.values()))
    if len(names) < 2:
        raise ValueError(
            f"{folders[first]} holds one class folder ({names[0]}): a classifier needs at least two; "
            f"expected {LAYOUTS}"
        )
    for split, other in classes.items():
        if other != names:
            raise ValueError(
                f"{folders[first]} and {folders[split]} hold different class folders (only in {first}/: "
                f"{sorted(set(names) - set(other))}; only in {split}/: {sorted(set(other) - set(names))}); "
                "every split needs the same class folders"
            )
    return names


def count_image_folder_classes(root: str | Path) -> int:
    """The number of classes under ``root`` (the ``${icasc_image_folder_classes:...}`` resolver)."""
    return len(image_folder_classes(root))


def list_class_images(folder: Path, classes: Sequence[str]) -> list[list[Path]]:
    """Per class, the sorted image files below ``folder/<class>`` (hidden folders skipped).

    Raises:
        ValueError: A class folder holds no image file (naming it).
    """
    out = []
    for name in classes:
        files = sorted(
            p
            for p in (folder / name).rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1])
        )
        if not files:
            raise ValueError(
                f"the class folder {folder / name} holds no image ({'/'.join(IMAGE_SUFFIXES)}); add "
                "images or remove the folder"
            )
        out.append(files)
    return out


def unreadable_images(files: Iterable[Path]) -> list[tuple[Path, str]]:
    """The files PIL cannot open and verify, each with its error (a header check, no full decode)."""
    bad = []
    for file in files:
        try:
            with Image.open(file) as image:
                image.verify()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            # UnidentifiedImageError (an OSError) for non-images; the others for damaged headers
            bad.append((file, f"{type(error).__name__}: {error}"))
    return bad


def split_per_class(
    files: Sequence[Sequence[Path]],
    classes: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, list[list[Path]]]:
    """Split each class's files at random: ``{"train", "val", "test": per class, the sorted files}``.

    Each class is drawn with its own generator seeded by ``(seed, class name)``, so the split of a class does
    not change when other classes are added. A split with a positive fraction gets ``round(fraction * n)``
    images of each class, at least one.

    Raises:
        ValueError: A class too small to keep a training image (naming the classes and their sizes).
    """
    out: dict[str, list[list[Path]]] = {s: [] for s in SPLITS}
    short = []
    for name, class_files in zip(classes, files):
        n = len(class_files)
        n_val, n_test = (max(1, round(f * n)) if f > 0 else 0 for f in (val_fraction, test_fraction))
        if n - n_val - n_test < 1:
            short.append(f"{name} ({n})")
        order = list(range(n))
        random.Random(f"{seed}:{name}").shuffle(order)
        parts = {
            "val": order[:n_val],
            "test": order[n_val : n_val + n_test],
            "train": order[n_val + n_test :],
        }
        for split, picked in parts.items():
            out[split].append([class_files[i] for i in sorted(picked)])
    if short:
        raise ValueError(
            f"{len(short)} class(es) have too few images to give val_fraction={val_fraction} and "
            f"test_fraction={test_fraction} (at least one image each) and keep one training image: "
            f"{', '.join(short[:10])}; add images or lower data.val_fraction / data.test_fraction"
        )
    return out
