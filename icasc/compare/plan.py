"""What a comparison runs: named override sets, checked before anything is trained.

A run is given as ``NAME=OVERRIDES`` (Hydra overrides of ``conf/train.yaml`` in one string, split like a shell
line) or as a preset name alone (``synthetic_icasc`` = ``synthetic_icasc=experiment=synthetic_icasc``).
Everything here is plain text and file names; composing the configs is :mod:`icasc.tasks.compare`'s job.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_REFERENCE",
    "DEFAULT_RUNS",
    "RUN_DEFAULTS",
    "CompareError",
    "RunSpec",
    "check_overrides",
    "check_plan",
    "parse_run",
    "presets",
]

# the old synthetic benchmark (baseline vs ICASC_Grad-CAM vs ICASC_A_ch) is the command without --run
DEFAULT_RUNS = ("synthetic_baseline", "synthetic_icasc_gradcam", "synthetic_icasc")
DEFAULT_REFERENCE = "synthetic_baseline"
# comparison runs need no export, figure or progress bar; the runs' and the user's overrides come after these
RUN_DEFAULTS = ("export=false", "figure.enabled=false", "trainer.enable_progress_bar=false")
# keys the command sets itself, and the option that sets them
RESERVED = {
    "seed": "--seeds",
    "test": "--split",
    "train": "(every run trains; finished runs are reused)",
    "ckpt_path": "(unfinished runs resume from their last.ckpt by themselves)",
    "paths.output_dir": "--out",
    "hydra.run.dir": "--out",
}
# a run's folder is <out>/runs/<name>/seed<k>: path-safe parts, no "..", nesting like the presets
_NAME = re.compile(r"[A-Za-z0-9][\w.+-]*(/[A-Za-z0-9][\w.+-]*)*")


class CompareError(ValueError):
    """A comparison that cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class RunSpec:
    """One run of the comparison: a name (its table row and folder) and its Hydra overrides."""

    name: str
    overrides: tuple[str, ...]


def presets(config_dir: Path) -> list[str]:
    """The experiment presets under ``config_dir/experiment`` (e.g. ``cifar100/resnet110_icasc_ach``).

    Files whose name (or folder) starts with ``_`` are shared bases, not presets.
    """
    root = config_dir / "experiment"
    found = (p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))
    return sorted(name for name in found if not any(part.startswith("_") for part in name.split("/")))


def override_key(override: str) -> str:
    """The key an override sets: ``+trainer.x=1`` -> ``trainer.x``, ``model/loss@x=y`` -> ``model/loss``."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split("@", 1)[0]


def _split(text: str, where: str) -> tuple[str, ...]:
    try:
        tokens = tuple(shlex.split(text))
    except ValueError as err:  # an unclosed quote
        raise CompareError(f"{where}: cannot split {text!r} into overrides ({err})") from err
    for token in tokens:
        if "=" not in token and not token.startswith("~"):
            raise CompareError(
                f"{where}: {token!r} is not a Hydra override (key=value); give a run as "
                'NAME="key=value ..." or as a preset name alone'
            )
    return tokens


def parse_run(text: str) -> RunSpec:
    """``NAME=OVERRIDES`` or a preset name alone -> :class:`RunSpec` (the preset is checked later)."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise CompareError(
            f"--run {text!r}: the name {name!r} must be letters, digits and _.+- (and / between parts), "
            "e.g. --run baseline=experiment=synthetic_baseline"
        )
    if not sep:
        return RunSpec(name, (f"experiment={name}",))
    return RunSpec(name, _split(rest, f"--run {name}"))


def check_overrides(where: str, overrides: Sequence[str], known: Sequence[str]) -> None:
    """Refuse keys the command sets itself and ``experiment=`` presets that do not exist."""
    for override in overrides:
        key = override_key(override)
        if key in RESERVED:
            raise CompareError(
                f"{where}: {override!r} sets {key}, which the command sets: use {RESERVED[key]}"
            )
        if key == "experiment" and "=" in override:
            preset = override.split("=", 1)[1]
            if preset not in known and preset != "null":
                raise CompareError(
                    f"{where}: unknown preset {preset!r}; the presets are: {', '.join(known) or '(none)'}"
                )


def check_plan(runs: Sequence[RunSpec], reference: str, seeds: Sequence[int]) -> None:
    """Refuse duplicate run names or seeds, and a reference that is not one of the runs."""
    names = [r.name for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CompareError(f"--run: the names {twice} are given more than once; give each run its own name")
    if reference not in names:
        raise CompareError(f"--reference {reference!r} is not one of the runs: {', '.join(names)}")
    if len(set(seeds)) != len(seeds):
        raise CompareError(f"--seeds has duplicates: {list(seeds)}")
    if any(s < 0 for s in seeds):
        raise CompareError(f"--seeds must be >= 0, got {list(seeds)}")
