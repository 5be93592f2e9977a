"""The param_saliency task: parameter-space saliency of a trained classifier on its validation images.

``python train.py -cn param_saliency ckpt_path=...`` profiles every validation image (per-filter mean
``|dL/dW|``), standardises the profiles with reference statistics of the same set (or loaded ones), and
writes the layer-wise profile plot of correct vs misclassified images, input-saliency overlays of the
mistakes, a nearest-neighbour grid, the statistics and ``report.json`` with the verification experiments
(pruning, perturbation, nearest neighbours, masking and, when enabled, targeted tuning with an export).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from icasc.data.contract import DataInfo, check_data_fits_model, describe_data
from icasc.models.export import config_hash, export_backbone
from icasc.models.loading import load_classifier_record
from icasc.models.record import ModelRecord, build_card
from icasc.saliency.base import normalize
from icasc.saliency.parameter import (
    L1ParameterSaliency,
    ParameterSaliency,
    RunningMoments,
    SaliencyStats,
    SmoothParameterSaliency,
    postprocess_input_saliency,
)
from icasc.saliency.parameter.experiments import (
    masking_experiment,
    nearest,
    neighbour_agreement,
    perturbation_experiment,
    pruning_experiment,
    tune_filters,
    tuning_experiment,
)
from icasc.saliency.parameter.plots import input_saliency_figure, neighbour_grid, profile_figure
from icasc.utils import denormalize, eval_mode

__all__ = ["run"]

log = logging.getLogger(__name__)

STATS_FILE = "stats.safetensors"


@dataclass
class _Analysis:
    """What every step of the task reads: the model, its saliency, the validation profiles and outputs."""

    cfg: DictConfig
    model: nn.Module
    info: dict
    datamodule: Any
    ps: ParameterSaliency
    standardized: torch.Tensor
    raw: torch.Tensor
    targets: torch.Tensor
    predictions: torch.Tensor
    out: Path
    files: dict = field(default_factory=dict)
    maps: dict = field(default_factory=dict)
    neighbours: torch.Tensor | None = None
    data: DataInfo | None = None  # what the data module gives (describe_data), set by run()
    record: ModelRecord | None = None  # what the analysed model is (its card's source), set by run()

    @property
    def correct(self) -> torch.Tensor:
        return self.predictions == self.targets

    @property
    def wrong(self) -> torch.Tensor:
        """Indices of the misclassified validation images."""
        return torch.nonzero(~self.correct).flatten()

    def first_wrong(self, limit: int) -> torch.Tensor:
        return self.wrong[: int(limit)]

    def images(self, index: torch.Tensor) -> torch.Tensor:
        """The validation images at ``index`` (the loader does not shuffle: row i is dataset[i])."""
        dataset = self.datamodule.val_dataloader().dataset
        return torch.stack([dataset[int(i)]["image"] for i in index.reshape(-1)])

    def pictures(self, index: torch.Tensor) -> torch.Tensor:
        """``[n, H, W, 3]`` displayable images."""
        images = self.images(index)
        return denormalize(images, self.data.display_mean, self.data.display_std).permute(0, 2, 3, 1)

    def top(self, index: torch.Tensor, k: int) -> torch.Tensor:
        return self.ps.top_filters(self.standardized[index], int(k))

    def label(self, c: int) -> str:
        names = self.info.get("class_names") or self.data.class_names
        return names[c] if names else str(c)


def _data(cfg: DictConfig, num_classes: int) -> tuple[Any, DataInfo]:
    datamodule = hydra.utils.instantiate(cfg.data)
    data = describe_data(datamodule, loaders=("val",))
    if data.multilabel:
        raise ValueError(
            "param_saliency needs single-label data (one class per image): set data.multilabel=false"
        )
    check_data_fits_model(
        data,
        num_classes,
        False,
        f"the model at ckpt_path={cfg.ckpt_path}",
        f"set data.num_classes={num_classes} or use the data it was trained on",
        "set data.multilabel=false",
    )
    datamodule.setup("validate")
    return datamodule, data


def _loader(datamodule: Any, batch_size: int | None) -> torch.utils.data.DataLoader:
    loader = datamodule.val_dataloader()
    if batch_size is None:
        return loader
    return torch.utils.data.DataLoader(loader.dataset, batch_size=int(batch_size), shuffle=False)


PARAM_SALIENCY_VARIANTS = ("vanilla", "smoothgrad", "l1")


def _saliency(model: nn.Module, s: DictConfig, method: str) -> ParameterSaliency:
    """The configured variant: the paper's |dL/dW| (vanilla), SmoothGrad (A.1) or L1 (A.7, Eq. 6)."""
    common = {
        "layers": None if s.layers is None else list(s.layers),
        "granularity": s.granularity,
        "method": method,
    }
    if s.variant == "vanilla":
        return ParameterSaliency(model, **common)
    if s.variant == "smoothgrad":
        return SmoothParameterSaliency(
            model, level=float(s.smoothgrad.level), n_samples=int(s.smoothgrad.n_samples), **common
        )
    if s.variant == "l1":
        return L1ParameterSaliency(model, alpha=float(s.l1.alpha), **common)
    raise ValueError(f"unknown saliency.variant {s.variant!r}; choose from {list(PARAM_SALIENCY_VARIANTS)}")


def _stats(ps: ParameterSaliency, profiles: torch.Tensor, cfg: DictConfig, out: Path) -> dict[str, Any]:
    if cfg.get("stats_path"):
        stats = ps.load_stats(cfg.stats_path)  # checked against this model's filters
        source = str(cfg.stats_path)
    else:  # the reference set is the analysed set: reuse its profiles rather than a second pass
        moments = RunningMoments()
        moments.update(profiles)
        if moments.count < 2:
            raise ValueError(
                f"the reference statistics need at least 2 validation images, got {moments.count}"
            )
        stats = SaliencyStats(moments.mean, moments.std(), moments.count, ps.filters, ps.granularity)
        ps.set_stats(stats)
        source = "fitted on the validation set"
    stats.save(out / STATS_FILE)
    return {"source": source, "count": stats.count, "file": STATS_FILE}


def _mistakes(a: _Analysis, k: int) -> dict[str, list]:
    """The layers and filters with the highest mean standardised saliency over the misclassified images."""
    if not len(a.wrong):
        return {"top_layers": [], "top_filters": []}
    mean = a.standardized[a.wrong].mean(dim=0)
    counts = torch.bincount(a.top(a.wrong, k).reshape(-1), minlength=a.ps.n_filters)
    layers = [
        {"layer": name, "mean_saliency": float(mean[cols].mean())} for name, cols in a.ps.layer_slices.items()
    ]
    layers.sort(key=lambda entry: -entry["mean_saliency"])
    filters = [
        {
            "layer": a.ps.filters[c][0],
            "channel": a.ps.filters[c][1],
            "column": c,
            "mean_saliency": float(mean[c]),
            "in_top_k_of": int(counts[c]),  # how many mistakes have this filter among their own top k
        }
        for c in a.ps.top_filters(mean, k).tolist()
    ]
    return {"top_layers": layers[:k], "top_filters": filters}


def _profile_plot(a: _Analysis) -> None:
    groups = {}
    for name, mask in (("correctly classified", a.correct), ("misclassified", ~a.correct)):
        if mask.any():
            groups[f"{name} (n={int(mask.sum())})"] = a.standardized[mask].mean(dim=0)
    title = "mean standardised filter saliency per layer (filters sorted descending)"
    profile_figure(groups, a.ps.layer_slices, a.out / "profile.png", title=title)
    a.files["profile"] = "profile.png"


def _input_saliency(a: _Analysis) -> None:
    """Raw maps for the overlays and the masking experiment; overlays of the first mistakes (B.2)."""
    cfg = a.cfg
    shown = a.first_wrong(cfg.num_images)
    masked = a.first_wrong(cfg.masking.max_samples if cfg.masking.enabled else 0)
    needed = torch.unique(torch.cat([shown, masked]))
    if len(needed):
        raw = a.ps.input_saliency(
            a.images(needed),
            a.targets[needed],
            a.top(needed, cfg.top_k),
            boost=float(cfg.input_saliency.boost),
        )
        a.maps = {int(i): raw[j] for j, i in enumerate(needed)}
    for i in shown.tolist():
        vis = postprocess_input_saliency(
            a.maps[i][None], percentile=float(cfg.input_saliency.percentile), blur=cfg.input_saliency.blur
        )
        text = f"val {i}: true {a.label(int(a.targets[i]))}, predicted {a.label(int(a.predictions[i]))}"
        path = a.out / "input_saliency" / f"{i}.png"
        input_saliency_figure(a.pictures(torch.tensor([i]))[0], normalize(vis)[0], path, text)
    a.files["input_saliency"] = [f"input_saliency/{i}.png" for i in shown.tolist()]


def _pruning(a: _Analysis) -> dict:
    """Per ranking (standardised / raw profile), group (misclassified / correct) and k: Fig. 10's changes."""
    p, out = a.cfg.pruning, {}
    rankings = {"standardized": a.standardized, "raw": a.raw}
    unknown = sorted(set(p.ranking) - set(rankings))
    if unknown:
        raise ValueError(f"unknown pruning.ranking {unknown}; choose from {sorted(rankings)}")
    for ranking in p.ranking:
        out[ranking] = {}
        for group, index in (("misclassified", a.wrong), ("correct", torch.nonzero(a.correct).flatten())):
            index = index[: int(p.max_samples)]
            if len(index):
                x, y, profiles = a.images(index), a.targets[index], rankings[ranking][index]
                out[ranking][group] = [
                    pruning_experiment(
                        a.model, x, y, a.ps.top_filters(profiles, int(k)), a.ps.filters, draws=int(p.draws),
                        seed=int(a.cfg.seed),
                    ).summary()
                    for k in p.k
                ]  # fmt: skip
    return out


def _perturbation(a: _Analysis) -> dict:
    p = a.cfg.perturbation
    index = a.first_wrong(p.max_samples)
    if not len(index):
        return {"samples": 0}
    return perturbation_experiment(
        a.model, a.images(index), a.targets[index], a.top(index, a.cfg.top_k), a.ps.filters,
        std=float(p.std), draws=int(p.draws), seed=int(a.cfg.seed),
    ).summary()  # fmt: skip


def _neighbours(a: _Analysis) -> dict:
    p = a.cfg.neighbours
    agreement = neighbour_agreement(a.neighbours[:, : int(p.k)], a.correct, a.correct)
    queries = a.first_wrong(p.grid_queries)
    if len(queries):
        grid = a.neighbours[queries, : int(p.grid_k)]
        shown = a.pictures(queries)
        neighbour_grid(
            shown,
            a.pictures(grid).reshape(*grid.shape, *shown.shape[1:]),
            a.correct[queries],
            a.correct[grid],
            a.out / "neighbours.png",
            [f"{a.label(int(a.targets[q]))} → {a.label(int(a.predictions[q]))}" for q in queries],
            [[a.label(int(a.predictions[j])) for j in row] for row in grid],
        )
        a.files["neighbours"] = "neighbours.png"
    return {"k": int(p.k), **agreement.summary()}


def _masking(a: _Analysis) -> dict:
    p = a.cfg.masking
    index = a.first_wrong(p.max_samples)
    if not len(index):
        return {"samples": 0}
    maps = torch.stack([a.maps[int(i)] for i in index])
    return masking_experiment(
        a.model, a.images(index), a.targets[index], maps, fraction=float(p.fraction), fill=float(p.fill),
        draws=int(p.draws), seed=int(a.cfg.seed),
    ).summary()  # fmt: skip


def _tuning(a: _Analysis) -> dict:
    p = a.cfg.tune
    if not len(a.wrong):
        return {"samples": 0}
    k = int(p.k)
    index = a.first_wrong(p.max_samples)
    neighbours = a.neighbours[index, : int(p.neighbours)]
    pool = torch.unique(neighbours)  # only the neighbours' images are needed: re-index into them
    remap = torch.full((len(a.targets),), -1, dtype=torch.long)
    remap[pool] = torch.arange(len(pool))
    per_sample = tuning_experiment(
        a.model, a.images(index), a.targets[index], a.top(index, k), a.ps.filters,
        least=torch.topk(a.standardized[index], k, dim=1, largest=False).indices, controls=list(p.controls),
        steps=int(p.steps), lr=float(p.lr), pool_images=a.images(pool), pool_targets=a.targets[pool],
        neighbours=remap[neighbours], seed=int(a.cfg.seed),
    )  # fmt: skip
    report: dict[str, Any] = {"per_sample": per_sample.summary()}
    if p.export:
        report["joint"] = _tune_and_export(a)
    return report


@torch.no_grad()
def _hits(model: nn.Module, loader: Any, max_batches: int | None) -> torch.Tensor:
    """``[N]`` bool per validation image: classified correctly by ``model`` (eval mode, modes restored)."""
    hits = []
    with eval_mode(model):
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            hits.append(model(batch["image"]).argmax(dim=1) == batch["target"])
    return torch.cat(hits)


def _tune_and_export(a: _Analysis) -> dict:
    """One model for all mistakes: tune the top-k filters of their mean standardised profile, then export."""
    p = a.cfg.tune
    columns = a.ps.top_filters(a.standardized[a.wrong].mean(dim=0), int(p.k))
    tuned = tune_filters(
        a.model,
        a.images(a.wrong),
        a.targets[a.wrong],
        columns,
        a.ps.filters,
        steps=int(p.steps),
        lr=float(p.lr),
    )
    after = _hits(tuned, _loader(a.datamodule, a.cfg.get("batch_size")), a.cfg.get("max_batches"))
    joint = {
        "filters": [list(a.ps.filters[c]) for c in columns.tolist()],
        "tuned_on": len(a.wrong),
        "accuracy_before": float(a.correct.float().mean()),
        "accuracy_after": float(after.float().mean()),
        "corrected": int((after & ~a.correct).sum()),
        "broken": int((~after & a.correct).sum()),
        "export": "tuned",
    }
    export_backbone(tuned, a.out / "tuned", _card(a, joint))
    a.files["tuned"] = "tuned"
    return joint


def _card(a: _Analysis, joint: dict) -> dict:
    """The tuned copy's model card: the analysed model's (an export's card carries its other keys)."""
    p, digest = a.cfg.tune, config_hash(OmegaConf.to_container(a.cfg, resolve=True))
    card = build_card(a.record, a.data, {"val/top1": joint["accuracy_after"]}, digest)
    card["tuned_from"] = str(a.cfg.ckpt_path)
    card["param_saliency_tuning"] = {**joint, "steps": int(p.steps), "lr": float(p.lr), "k": int(p.k)}
    return card


def _total(loader: Any, max_batches: int | None) -> int | None:
    total = len(loader)
    return total if max_batches is None else min(total, int(max_batches))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Analyse ``cfg.ckpt_path`` on the validation set; write the figures, the stats and ``report.json``."""
    if not cfg.get("ckpt_path"):
        raise ValueError(
            "param_saliency needs ckpt_path=<a Lightning .ckpt, an export directory or model.safetensors>"
        )
    torch.manual_seed(int(cfg.seed))
    model, record = load_classifier_record(cfg.ckpt_path)
    info = record.as_info()
    datamodule, data = _data(cfg, int(info["num_classes"]))
    ps = _saliency(model, cfg.saliency, cfg.saliency.method)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    loader, max_batches, quiet = (
        _loader(datamodule, cfg.get("batch_size")),
        cfg.get("max_batches"),
        not cfg.progress,
    )
    profiles = ps.profiles(
        tqdm(loader, "profiles", total=_total(loader, max_batches), disable=quiet), max_batches
    )
    stats = _stats(ps, profiles.profiles, cfg, out)
    a = _Analysis(
        cfg, model, info, datamodule, ps, ps.standardize(profiles.profiles), profiles.profiles,
        profiles.targets, profiles.predictions, out, files={"stats": STATS_FILE}, data=data,
        record=record,
    )  # fmt: skip
    n = len(a.targets)
    log.info("profiled %d validation images: %d misclassified", n, len(a.wrong))
    report: dict[str, Any] = {
        "ckpt_path": str(cfg.ckpt_path),
        "samples": n,
        "correct": int(a.correct.sum()),
        "misclassified": len(a.wrong),
        "accuracy": float(a.correct.float().mean()),
        "layers": ps.layers,
        "n_filters": ps.n_filters,
        "granularity": ps.granularity,
        "stats": stats,
        "top_k": int(cfg.top_k),
        "mistakes": _mistakes(a, int(cfg.top_k)),
    }
    _profile_plot(a)
    _input_saliency(a)
    if cfg.neighbours.enabled or cfg.tune.enabled:
        k = min(max(int(cfg.neighbours.k), int(cfg.tune.neighbours)), n - 1)
        a.neighbours = nearest(a.standardized, a.standardized, k=k, exclude=torch.arange(n)).index
    steps = {
        "pruning": _pruning,
        "perturbation": _perturbation,
        "neighbours": _neighbours,
        "masking": _masking,
    }
    steps["tuning"] = _tuning
    enabled = [name for name in steps if cfg["tune" if name == "tuning" else name].enabled]
    for name in tqdm(enabled, "experiments", disable=quiet):
        report[name] = steps[name](a)
    report["files"] = a.files
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("parameter saliency written to %s", out)
    print(json.dumps({key: report[key] for key in ("samples", "misclassified", "accuracy")}), flush=True)
    return report
