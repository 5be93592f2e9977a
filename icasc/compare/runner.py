"""Run the planned jobs one after another, saving every finished run at once and reporting progress."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from icasc.compare import store
from icasc.compare.plan import CompareError
from icasc.compare.store import Job
from icasc.tasks import compare as compare_task

__all__ = ["execute"]

_DOING = {"train": "training", "resume": "resuming from last.ckpt", "score": "scoring the best checkpoint"}
_DONE = {"train": "trained", "resume": "resumed", "score": "scored"}


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _work(job: Job, config_dir: Path, split: str) -> dict[str, Any]:
    """Train, resume or score one job; return the train task's metrics and best checkpoint."""
    # a fine-tune (init_from) scores its before/after report on the same split
    overrides = [
        *job.overrides,
        f"seed={job.seed}",
        f"before_after.split={split}",
        *(["test=true"] if split == "test" else []),
    ]
    if job.action == "score":
        assert job.record is not None
        return compare_task.score(config_dir, overrides, job.run_dir, Path(job.record["best_checkpoint"]))
    resume = job.run_dir / "checkpoints" / "last.ckpt" if job.action == "resume" else None
    return compare_task.train(config_dir, overrides, job.run_dir, resume=resume)


def _finish(job: Job, result: dict[str, Any], wall_s: float, split: str) -> dict[str, Any]:
    if not any(k.startswith(f"{split}/") for k in result["metrics"]):
        raise CompareError(
            f"{job.spec.name} seed {job.seed} logged no {split} metrics "
            f"(it returned {sorted(result['metrics'])})"
        )
    previous = job.record or {}
    return {
        "name": job.spec.name,
        "seed": job.seed,
        "overrides": job.overrides,
        # scoring on another split adds to the metrics the run already had
        "metrics": {**previous.get("metrics", {}), **result["metrics"]},
        "best_checkpoint": result["best_checkpoint"],
        # the training time; scoring alone keeps the time it took to train
        "wall_s": previous.get("wall_s", round(wall_s, 1)) if job.action == "score" else round(wall_s, 1),
        "run_dir": str(job.run_dir),
        "how": _DONE[job.action],
    }


def _upsert(records: list[dict[str, Any]], record: dict[str, Any]) -> None:
    key = (record["name"], int(record["seed"]))
    records[:] = [r for r in records if (r["name"], int(r["seed"])) != key]
    records.append(record)


def execute(
    jobs: Sequence[Job],
    records: list[dict[str, Any]],
    out: Path,
    config_dir: Path,
    split: str,
    progress: Callable[[str], None] = _stderr,
) -> list[dict[str, Any]]:
    """Do every job in order; after each, write its record to its folder and ``results.json``.

    Args:
        jobs: From :func:`~icasc.compare.store.plan_jobs`.
        records: Every record of ``results.json``; updated in place (records of other runs are kept).
        out: The comparison's folder.
        config_dir: Where ``train.yaml`` is.
        split: ``test`` or ``val``: the split each run must be scored on.
        progress: Takes one line per job (stderr by default).

    Returns:
        The records of ``jobs``, in order.
    """
    results_path = out / "results.json"
    done: list[dict[str, Any]] = []
    work = [j for j in jobs if j.action != "reuse"]
    spent: list[float] = []  # seconds of the jobs this call did: the estimate of what is left
    for i, job in enumerate(jobs, 1):
        head = f"[compare] {i}/{len(jobs)} {job.spec.name} seed {job.seed}"
        if job.action == "reuse":
            assert job.record is not None
            if job.record not in records:  # found in its folder only: back into results.json
                _upsert(records, job.record)
                store.save_results(results_path, records)
            progress(f"{head}: reused ({job.run_dir})")
            done.append(job.record)
            continue
        if job.clear:
            store.clear(job.run_dir)
        progress(f"{head}: {_DOING[job.action]} ({' '.join(job.spec.overrides) or 'conf/train.yaml as is'})")
        if job.action != "score":
            # before training: an interrupted run is recognised (and resumed) by this file
            store.write_json(
                job.run_dir / store.RECORD,
                {"name": job.spec.name, "seed": job.seed, "overrides": job.overrides},
            )
        start = time.perf_counter()
        record = _finish(job, _work(job, config_dir, split), time.perf_counter() - start, split)
        spent.append(time.perf_counter() - start)
        store.write_json(job.run_dir / store.RECORD, record)
        _upsert(records, record)
        store.save_results(results_path, records)
        done.append(record)
        left = len(work) - len(spent)
        eta = f", eta {_duration(left * sum(spent) / len(spent))}" if left else ""
        value = record["metrics"].get(f"{split}/top1")
        shown = f"; {split}/top1 {value:.4f}" if value is not None else ""
        progress(f"{head}: {record['how']} in {_duration(spent[-1])}{shown}{eta}")
    return done
