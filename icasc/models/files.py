"""Open checkpoint and safetensors files, with errors that name the file, the option and the fix.

Every task reads a Lightning checkpoint (``ckpt_path``, ``init_from``) or an exported ``model.safetensors``
through these functions, so a truncated or foreign file fails the same way everywhere: with the path, what
is wrong with it, and what to do, instead of ``PytorchStreamReader failed reading zip archive`` or
``SafetensorError: header too large``.

Example:
    >>> check_checkpoint_file("outputs/train/runs/x/checkpoints/last.ckpt")  # doctest: +SKIP
    >>> checkpoint = read_checkpoint("last.ckpt", option="init_from")  # doctest: +SKIP
    >>> state = read_safetensors("export/model.safetensors", option="ckpt_path")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

__all__ = [
    "check_checkpoint_file",
    "check_safetensors_file",
    "read_checkpoint",
    "read_safetensors",
    "reading_checkpoint",
]

_CHECKPOINT_FIX = (
    "A checkpoint copied, downloaded or written while the run was stopped can be cut short: copy it again, "
    "or point {option} at another checkpoint of the run (e.g. <run>/checkpoints/last.ckpt)"
)
_SAFETENSORS_FIX = (
    "A file copied or downloaded only in part is cut short: copy the complete file again, or export the "
    "model again (python train.py -cn export ckpt_path=<its .ckpt>)"
)
_FOREIGN_CHECKPOINT = (
    "it was written by an older icasc or is not a checkpoint of this project ({detail}); train it again "
    "with this icasc, or load its weights with an export (model.safetensors) instead"
)


def _named(path: Path, option: str | None) -> str:
    return f"{option}={path}" if option else str(path)


def _exists(path: str | Path, option: str | None, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{_named(path, option)}: no such file; give the path of {what}")
    if not path.is_file():
        raise ValueError(f"{_named(path, option)} is a directory, not {what}")
    return path


def _not_a_checkpoint(path: Path, option: str | None, detail: str) -> ValueError:
    fix = _CHECKPOINT_FIX.format(option=option or "the path")
    return ValueError(
        f"{_named(path, option)} is truncated or not a Lightning checkpoint ({detail}; "
        f"{path.stat().st_size} bytes). {fix}."
    )


def check_checkpoint_file(path: str | Path, option: str | None = "ckpt_path") -> Path:
    """Check cheaply that ``path`` is a complete checkpoint archive, without loading its tensors.

    ``torch.save`` (and so Lightning) writes a zip archive whose directory sits at the end of the file: a
    truncated file has none. This reads that directory and looks for the pickled object (``data.pkl``);
    it reads no tensor data, so it costs milliseconds on a checkpoint of any size.

    Args:
        path: The ``.ckpt`` file.
        option: The config option that named it (``"ckpt_path"``, ``"init_from"``), for the message;
            ``None`` names the path alone.

    Returns:
        ``path`` as a ``Path`` (``~`` expanded).

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ValueError: A directory, a truncated file, or a file that is not a ``torch.save`` archive (the
            message names the path, says it is truncated or not a checkpoint, and how to fix it).
    """
    path = _exists(path, option, "a Lightning checkpoint (.ckpt)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            size = path.stat().st_size
            # an entry whose data would run past the end of the file (a damaged directory)
            overrun = [i.filename for i in archive.infolist() if i.header_offset + i.compress_size > size]
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise _not_a_checkpoint(path, option, f"not a complete zip archive: {error}") from error
    if overrun:
        raise _not_a_checkpoint(path, option, f"its entry {overrun[0]} runs past the end of the file")
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        raise _not_a_checkpoint(path, option, "a zip archive without the data.pkl that torch.save writes")
    return path


@contextmanager
def reading_checkpoint(path: str | Path, option: str | None = "ckpt_path") -> Iterator[None]:
    """Turn the errors of reading a checkpoint inside the block into one that names the file and the fix.

    For code that reads a checkpoint through another library (``LightningModule.load_from_checkpoint``):
    a damaged archive (``PytorchStreamReader failed reading zip archive``), a cut-off pickle (``EOFError``,
    ``UnpicklingError``) and a pickle that ``weights_only=True`` refuses (a global that is not allowed: an
    older icasc's or another project's checkpoint) become ``ValueError``.

    Args:
        path: The checkpoint being read.
        option: The config option that named it, for the message.

    Raises:
        ValueError: As described; the original error is chained.
    """
    path = Path(path).expanduser()
    try:
        yield
    except pickle.UnpicklingError as error:
        text = str(error)
        if "weights_only" in text.lower() or "global" in text.lower():
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            detail = text[:200]
            if found:
                detail = f"it pickles {found.group(1)}, which weights_only loading refuses"
            raise ValueError(
                f"{_named(path, option)} cannot be read safely: " + _FOREIGN_CHECKPOINT.format(detail=detail)
            ) from error
        raise _not_a_checkpoint(path, option, f"its pickle is damaged: {error}") from error
    except (EOFError, zipfile.BadZipFile) as error:
        raise _not_a_checkpoint(path, option, f"{type(error).__name__}: {error}") from error
    except RuntimeError as error:
        text = str(error)
        if "PytorchStreamReader" not in text and "zip archive" not in text:
            raise
        raise _not_a_checkpoint(path, option, text.split(". ")[0]) from error


def read_checkpoint(
    path: str | Path,
    option: str | None = "ckpt_path",
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` a Lightning checkpoint after :func:`check_checkpoint_file`.

    Only tensors and plain data are unpickled (icasc's checkpoints hold nothing else); any other pickle is
    refused with a clear error.

    Args:
        path: The ``.ckpt`` file.
        option: The config option that named it, for the message.
        map_location: Device for the tensors.

    Returns:
        The checkpoint dictionary.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ValueError: A truncated or foreign file, or one that does not hold a dictionary.
    """
    path = check_checkpoint_file(path, option)
    with reading_checkpoint(path, option):
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict):
        raise _not_a_checkpoint(path, option, f"it holds a {type(checkpoint).__name__}, not a dictionary")
    return checkpoint


# ------------------------------------------------------------------------------------------ safetensors


def _not_safetensors(path: Path, option: str | None, detail: str) -> ValueError:
    return ValueError(
        f"{_named(path, option)} is truncated or not a safetensors file ({detail}; "
        f"{path.stat().st_size} bytes). {_SAFETENSORS_FIX}."
    )


def check_safetensors_file(path: str | Path, option: str | None = None) -> Path:
    """Check cheaply that ``path`` is a complete safetensors file (its header and the data it announces).

    A safetensors file is an 8-byte header length, a JSON header giving each tensor's byte range, and the
    data. This reads the header only and checks that the file is long enough for every range.

    Args:
        path: The ``.safetensors`` file.
        option: The config option that named it, for the message; ``None`` names the path alone.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ValueError: A truncated file or one that is not safetensors (naming the path and the fix).
    """
    path = _exists(path, option, "a model.safetensors file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _not_safetensors(path, option, "shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise _not_safetensors(
                path, option, f"header too large: it announces {length} bytes, more than the file holds"
            )
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _not_safetensors(path, option, f"its header is not JSON: {error}") from error
    if not isinstance(header, dict):
        raise _not_safetensors(path, option, "its header is not a JSON object")
    ends = [
        entry["data_offsets"][1]
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets") or ()) == 2
    ]
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        raise _not_safetensors(path, option, f"its tensors need {needed} bytes")
    return path


def read_safetensors(
    path: str | Path, option: str | None = None, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` after :func:`check_safetensors_file`, with clear errors.

    Args:
        path: The ``.safetensors`` file.
        option: The config option that named it, for the message.
        device: Device for the tensors.

    Returns:
        The state dict.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ValueError: A truncated or damaged file.
    """
    path = check_safetensors_file(path, option)
    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as error:
        raise _not_safetensors(path, option, str(error)) from error
