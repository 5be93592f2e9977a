"""Where a comparison keeps its runs, and what each planned run still needs.

``<out>/results.json`` holds every finished run of the folder (``{"version": 1, "runs": [record, ...]}``),
rewritten atomically after each run. Each run folder ``<out>/runs/<name>/seed<k>/`` also holds
``compare_run.json``: written with its overrides before training starts (so an interrupted run can be resumed
from its ``last.ckpt``) and with its record when it ends (so the folder alone suffices to reuse it).

A record: ``{"name", "seed", "overrides", "metrics", "best_checkpoint", "wall_s", "run_dir", "how"}``, where
``overrides`` are the run's full overrides without the seed, the split flag and the folder (so a run can be
reported on another split without training it again) and ``metrics`` every numeric metric the train task
returned (``val/...`` of the best checkpoint, ``test/...`` when it was scored on test).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icasc.compare.plan import RUN_DEFAULTS, CompareError, RunSpec

__all__ = [
    "RECORD",
    "Job",
    "clear",
    "load_results",
    "plan_jobs",
    "read_json",
    "run_dir",
    "save_results",
    "seeded",
    "write_json",
]

RECORD = "compare_run.json"
RESULTS_VERSION = 1


@dataclass
class Job:
    """One planned (run, seed) and what it needs.

    ``action`` is ``reuse`` (recorded with the split's metrics: nothing to do), ``score`` (recorded, but not
    on this split: score its best checkpoint), ``resume`` (interrupted: continue from ``last.ckpt``) or
    ``train``; ``clear`` says the folder holds an earlier attempt of this run that is removed first.
    """

    spec: RunSpec
    seed: int
    overrides: list[str]
    run_dir: Path
    action: str
    record: dict[str, Any] | None = None
    clear: bool = False


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON through a temporary file and a rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` where there is no file; a damaged file fails with its name."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CompareError(f"{path} is not valid JSON ({err}); remove it or use another --out") from err


def run_dir(out: Path, name: str, seed: int) -> Path:
    """The folder of one run: ``<out>/runs/<name>/seed<k>``."""
    return out / "runs" / name / f"seed{seed}"


def load_results(path: Path) -> list[dict[str, Any]]:
    """The records in ``results.json`` (none where the file does not exist)."""
    data = read_json(path)
    if data is None:
        return []
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise CompareError(f"{path} is not a results file of python -m icasc.compare; use another --out")
    return list(data["runs"])


def save_results(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Rewrite ``results.json`` with ``records`` (atomically)."""
    write_json(path, {"version": RESULTS_VERSION, "runs": list(records)})


def _has_split(record: dict[str, Any], split: str) -> bool:
    return any(k.startswith(f"{split}/") for k in record.get("metrics", {}))


def _traces(folder: Path) -> list[Path]:
    # what the train task refuses to start a new run over
    return [p for p in (folder / "checkpoints" / "last.ckpt", folder / "csv" / "metrics.csv") if p.exists()]


def _conflict(name: str, seed: int, where: Path, recorded: Sequence[str], now: Sequence[str]) -> str:
    return (
        f"{name} seed {seed} is recorded in {where} with other overrides:\n"
        f"  recorded: {' '.join(recorded)}\n  now:      {' '.join(now)}"
    )


def _job(
    spec: RunSpec,
    seed: int,
    overrides: list[str],
    folder: Path,
    recorded: dict[str, Any] | None,
    results_path: Path,
    split: str,
    fresh: bool,
) -> Job:
    marker = read_json(folder / RECORD)
    if fresh:
        if marker is None and _traces(folder):
            raise CompareError(f"{folder} holds a run that python -m icasc.compare did not start")
        return Job(spec, seed, overrides, folder, "train", clear=marker is not None)
    source, where = (recorded, results_path) if recorded is not None else (marker, folder / RECORD)
    if source is None:
        if _traces(folder):
            raise CompareError(f"{folder} holds a run that python -m icasc.compare did not start")
        return Job(spec, seed, overrides, folder, "train")
    if list(source.get("overrides", [])) != overrides:
        raise CompareError(_conflict(spec.name, seed, where, source.get("overrides", []), overrides))
    if "metrics" in source:  # a finished run
        if _has_split(source, split):
            return Job(spec, seed, overrides, folder, "reuse", record=source)
        best = source.get("best_checkpoint")
        if best and Path(best).is_file():
            return Job(spec, seed, overrides, folder, "score", record=source)
        raise CompareError(
            f"{spec.name} seed {seed} has no {split} metrics and its best checkpoint {best} is gone"
        )
    if (folder / "checkpoints" / "last.ckpt").is_file():
        return Job(spec, seed, overrides, folder, "resume")
    # started but stopped before its first checkpoint: nothing worth keeping
    return Job(spec, seed, overrides, folder, "train", clear=True)


_SEED = re.compile(r"(?<!\$)\{seed\}")


def seeded(overrides: Sequence[str], seed: int) -> list[str]:
    """``overrides`` with every ``{seed}`` replaced by ``seed``.

    A run can then start from its own seed's checkpoint of an earlier comparison, e.g. the fine-tuning regime
    ``init_from=outputs/compare/base/runs/baseline/seed{seed}/export`` (Hydra's own ``${...}`` is untouched).
    """
    return [_SEED.sub(str(seed), o) for o in overrides]


def plan_jobs(
    out: Path,
    runs: Sequence[RunSpec],
    seeds: Sequence[int],
    common: Sequence[str],
    split: str,
    records: Sequence[dict[str, Any]],
    fresh: bool,
) -> list[Job]:
    """What each (run, seed) needs, from ``results.json`` (``records``) and the run folders.

    Raises:
        CompareError: A run is recorded with other overrides, or its folder holds a run this command did not
            start; every such run is named in one message, with the ways out.
    """
    results_path = out / "results.json"
    index = {(r["name"], int(r["seed"])): r for r in records}
    jobs, problems = [], []
    for spec in runs:
        overrides = [*RUN_DEFAULTS, *spec.overrides, *common]
        for seed in seeds:
            recorded = None if fresh else index.get((spec.name, seed))
            try:
                jobs.append(
                    _job(
                        spec,
                        seed,
                        seeded(overrides, seed),
                        run_dir(out, spec.name, seed),
                        recorded,
                        results_path,
                        split,
                        fresh,
                    )
                )
            except CompareError as err:
                problems.append(str(err))
    if problems:
        raise CompareError(
            "\n".join(problems)
            + f"\nnothing was run. Pass --fresh to train these runs again in {out} (the folders it wrote "
            "are replaced; it never removes a folder it did not write), give the runs other names, "
            "or use another --out"
        )
    return jobs


def clear(folder: Path) -> None:
    """Remove an earlier attempt of a run; only a folder this command wrote (with ``compare_run.json``)."""
    if (folder / RECORD).exists():
        shutil.rmtree(folder)
