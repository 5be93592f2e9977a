"""Nearest neighbours in parameter-saliency space (App. A.2, A.4): cosine similarity of profiles.

Samples whose mistakes come from the same misbehaving filters have similar (standardised) profiles; A.2
reports that 89.0% of the 10 nearest neighbours of correctly classified ImageNet images are correct, but only
10.8% of those of misclassified ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["NeighbourAgreement", "Neighbours", "nearest", "neighbour_agreement"]


@dataclass
class Neighbours:
    """``index [Q, k]`` pool rows of each query's nearest neighbours, most similar first, and their
    cosine ``similarity [Q, k]``."""

    index: torch.Tensor
    similarity: torch.Tensor


def _check_profiles(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be [N, n_filters] saliency profiles, got {shape}")
    if not torch.isfinite(x).all():
        raise ValueError(
            f"{name} hold NaN or inf values; standardise with statistics whose std is positive "
            "(ParameterSaliency.standardize adds an epsilon) and check the profiles"
        )
    return x.float()


def nearest(
    queries: torch.Tensor,
    pool: torch.Tensor,
    k: int = 10,
    exclude: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> Neighbours:
    """The ``k`` profiles of ``pool`` most cosine-similar to each query (A.2, A.4).

    Similarities are batched matrix products of the L2-normalised profiles, ``chunk_size`` queries at a
    time (memory ``chunk_size × N``).

    Args:
        queries: ``[Q, F]`` (standardised) profiles.
        pool: ``[N, F]`` profiles to search, e.g. the whole validation set.
        k: Neighbours per query.
        exclude: ``[Q]`` pool row of each query to leave out (the query itself when it is in the pool), or
            ``-1`` for none.
        chunk_size: Queries per matrix product.

    Returns:
        :class:`Neighbours`, most similar first (the order among exact ties is unspecified).
    """
    queries, pool = _check_profiles("queries", queries), _check_profiles("pool", pool)
    if queries.shape[1] != pool.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} filters but the pool has {pool.shape[1]}")
    available = pool.shape[0] - (0 if exclude is None else 1)
    if not 1 <= k <= available:
        raise ValueError(f"k must be in [1, {available}] (pool size minus the excluded query), got {k}")
    if exclude is not None:
        exclude = torch.as_tensor(exclude, dtype=torch.long, device=pool.device).reshape(-1)
        if exclude.numel() != queries.shape[0]:
            raise ValueError(
                f"exclude needs one pool row (or -1) per query: {queries.shape[0]}, got {exclude.numel()}"
            )
    q, p = F.normalize(queries, dim=1), F.normalize(pool, dim=1)
    index, similarity = [], []
    for start in range(0, q.shape[0], chunk_size):
        sim = q[start : start + chunk_size] @ p.T
        if exclude is not None:
            rows = exclude[start : start + chunk_size]
            keep = rows >= 0
            sim[torch.arange(sim.shape[0], device=sim.device)[keep], rows[keep]] = float("-inf")
        similar, top = torch.topk(sim, k, dim=1, sorted=True)
        index.append(top)
        similarity.append(similar)
    return Neighbours(torch.cat(index), torch.cat(similarity))


@dataclass
class NeighbourAgreement:
    """Per query: the fraction of its neighbours classified correctly, and sharing its correctness."""

    neighbours_correct: torch.Tensor
    same_correctness: torch.Tensor
    query_correct: torch.Tensor

    def summary(self) -> dict[str, float | int | None]:
        """A.2's numbers: mean fraction of correct neighbours for correct and for misclassified queries."""

        def mean(x: torch.Tensor) -> float | None:
            return float(x.mean()) if x.numel() else None

        ok = self.query_correct
        return {
            "queries_correct": int(ok.sum()),
            "queries_misclassified": int((~ok).sum()),
            "correct_neighbours_of_correct": mean(self.neighbours_correct[ok]),
            "correct_neighbours_of_misclassified": mean(self.neighbours_correct[~ok]),
            "same_correctness_of_correct": mean(self.same_correctness[ok]),
            "same_correctness_of_misclassified": mean(self.same_correctness[~ok]),
            "same_correctness": mean(self.same_correctness),
        }


def neighbour_agreement(
    index: torch.Tensor, pool_correct: torch.Tensor, query_correct: torch.Tensor
) -> NeighbourAgreement:
    """How many of each query's neighbours are correct, and share the query's correctness (A.2).

    Args:
        index: ``[Q, k]`` neighbour rows of the pool (:func:`nearest`).
        pool_correct: ``[N]`` bool, pool sample classified correctly.
        query_correct: ``[Q]`` bool, query classified correctly.
    """
    pool_correct = torch.as_tensor(pool_correct, dtype=torch.bool)
    query_correct = torch.as_tensor(query_correct, dtype=torch.bool).reshape(-1)
    if index.dim() != 2 or index.shape[0] != query_correct.numel():
        raise ValueError(
            f"index must be [Q, k] with Q = {query_correct.numel()} queries, got {tuple(index.shape)}"
        )
    correct = pool_correct[index.to(pool_correct.device)].float()
    same = (pool_correct[index.to(pool_correct.device)] == query_correct[:, None]).float()
    return NeighbourAgreement(correct.mean(dim=1), same.mean(dim=1), query_correct)
