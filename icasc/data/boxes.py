"""Object boxes of a folder of images, read from a CSV or a COCO-style JSON file.

Two formats, told apart by the file's suffix:

* ``.csv`` with the header ``filename,x1,y1,x2,y2`` (more columns are allowed and ignored), one box a row:
  ``filename`` relative to the image folder's root (e.g. ``train/cat/001.jpg``), the corners in pixels of
  the original image (pixel-edge ``xyxy``: ``0,0,W,H`` covers a ``W x H`` image).
* ``.json`` in the COCO style: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "bbox":
  [x, y, w, h]}]}``; other keys (``categories``, ``iscrowd``, ...) are ignored, the class comes from the
  image's folder.

An image may have several rows (or annotations); :func:`enclosing_boxes` merges them into the one box that
encloses them all, the ``"box"`` the attention metrics score.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import Tensor

from icasc.utils import is_number

__all__ = [
    "BOX_SUFFIXES",
    "BoxRow",
    "check_box_file",
    "enclosing_boxes",
    "read_box_file",
    "read_coco_boxes",
    "read_csv_boxes",
    "relative_name",
]

BOX_SUFFIXES = (".csv", ".json")
CSV_COLUMNS = ("filename", "x1", "y1", "x2", "y2")


@dataclass(frozen=True)
class BoxRow:
    """One box of one image.

    Attributes:
        filename: The image's path relative to the root, ``/``-separated (see :func:`relative_name`).
        box: ``(x1, y1, x2, y2)`` in pixels of the original image, ``x2 > x1`` and ``y2 > y1``.
        where: Where the box was read, for messages: ``boxes.csv:12`` or ``boxes.json annotations[3]``.
    """

    filename: str
    box: tuple[float, float, float, float]
    where: str


def relative_name(name: str) -> str:
    """``name`` as boxes are matched by it: ``/``-separated and normalised (``.\\a\\b.jpg``: ``a/b.jpg``)."""
    return PurePosixPath(name.strip().replace("\\", "/")).as_posix()


def _check_box(box: Sequence[float], where: str, fields: str) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"{where}: the box {fields} holds a non-finite value: {list(box)}")
    if x2 <= x1 or y2 <= y1:
        raise ValueError(
            f"{where}: the box {fields} = {list(box)} is empty or inverted: it needs x2 > x1 and y2 > y1 "
            "(pixel corners of the original image)"
        )
    return (x1, y1, x2, y2)


def read_csv_boxes(path: str | Path) -> list[BoxRow]:
    """The boxes of a CSV file with the header ``filename,x1,y1,x2,y2`` (xyxy pixels).

    Raises:
        ValueError: A missing column, or a row without a filename, with non-numeric, non-finite, empty or
            inverted coordinates (the message names ``path:line``).
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        header = [(name or "").strip() for name in reader.fieldnames or []]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise ValueError(
                f"{path}:1: the header lacks {', '.join(missing)}; a boxes CSV starts with the header "
                f"'{','.join(CSV_COLUMNS)}' (filename relative to data.root, pixel corners), got {header}"
            )
        reader.fieldnames = header
        rows = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not any((v or "").strip() for k, v in row.items() if k is not None):
                continue  # a blank line
            name = (row.get("filename") or "").strip()
            if not name:
                raise ValueError(f"{where}: no filename; every row needs '{','.join(CSV_COLUMNS)}'")
            try:
                box = [float(row[c]) for c in CSV_COLUMNS[1:]]  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise ValueError(
                    f"{where}: x1,y1,x2,y2 must be numbers (pixels), got "
                    f"{[row.get(c) for c in CSV_COLUMNS[1:]]}"
                ) from None
            rows.append(BoxRow(relative_name(name), _check_box(box, where, "x1,y1,x2,y2"), where))
    return rows


def _field(entry: Any, key: str, where: str) -> Any:
    if not isinstance(entry, Mapping) or key not in entry:
        raise ValueError(f"{where} lacks {key!r}")
    return entry[key]


def read_coco_boxes(path: str | Path) -> list[BoxRow]:
    """The boxes of a COCO-style JSON file (``images`` with ``id``/``file_name``, ``annotations`` with
    ``image_id``/``bbox`` as ``[x, y, w, h]`` pixels), converted to xyxy.

    Raises:
        ValueError: Not JSON, no ``images``/``annotations`` lists, an entry lacking a key, an annotation of an
            unknown ``image_id``, or a bbox that is not 4 finite numbers with ``w, h > 0`` (the message names
            the entry, e.g. ``annotations[3]``).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a JSON file: {error}") from error
    for key in ("images", "annotations"):
        if not isinstance(data, Mapping) or not isinstance(data.get(key), list):
            raise ValueError(
                f"{path} needs a list {key!r}: the COCO style is "
                '{"images": [{"id", "file_name"}], "annotations": [{"image_id", "bbox": [x, y, w, h]}]}'
            )
    names: dict[Any, str] = {}
    for i, image in enumerate(data["images"]):
        where = f"{path} images[{i}]"
        names[_field(image, "id", where)] = relative_name(str(_field(image, "file_name", where)))
    rows = []
    for i, annotation in enumerate(data["annotations"]):
        where = f"{path} annotations[{i}]"
        image_id, bbox = _field(annotation, "image_id", where), _field(annotation, "bbox", where)
        if image_id not in names:
            raise ValueError(f"{where}: image_id {image_id!r} is not the id of any entry of 'images'")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
            raise ValueError(f"{where}: bbox must be 4 numbers [x, y, w, h] in pixels, got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
        rows.append(
            BoxRow(names[image_id], _check_box((x, y, x + w, y + h), where, "[x, y, x+w, y+h]"), where)
        )
    return rows


def check_box_file(path: str | Path) -> Path:
    """``path`` as a ``Path``, checked to be an existing ``.csv`` or ``.json`` file (without reading it).

    Raises:
        ValueError: Another suffix (the message names ``data.boxes`` and the two formats).
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if path.suffix.lower() not in BOX_SUFFIXES:
        raise ValueError(
            f"data.boxes={path}: unknown box file format {path.suffix!r}; give a .csv with the header "
            f"'{','.join(CSV_COLUMNS)}' or a COCO-style .json"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"data.boxes={path} does not exist (a relative path is read from data.root); fix the path or "
            "set data.boxes=null to train without boxes"
        )
    return path


def read_box_file(path: str | Path) -> list[BoxRow]:
    """The boxes of a ``.csv`` (:func:`read_csv_boxes`) or a COCO ``.json`` (:func:`read_coco_boxes`) file.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names ``data.boxes``).
        ValueError: Another suffix, or a malformed file.
    """
    path = check_box_file(path)
    return read_csv_boxes(path) if path.suffix.lower() == ".csv" else read_coco_boxes(path)


def enclosing_boxes(rows: Iterable[BoxRow]) -> dict[str, Tensor]:
    """``{filename: float32 [4]}``: per image, the box enclosing all of its boxes (its only box if one)."""
    grouped: dict[str, list[tuple[float, float, float, float]]] = {}
    for row in rows:
        grouped.setdefault(row.filename, []).append(row.box)
    out = {}
    for name, boxes in grouped.items():
        b = torch.tensor(boxes, dtype=torch.float32)
        out[name] = torch.cat([b[:, :2].min(dim=0).values, b[:, 2:].max(dim=0).values])
    return out
