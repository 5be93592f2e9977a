"""Pure pieces of parameter-space saliency: top-k filters, boosted target profiles, input-map visualisation.

Input-space saliency for a filter set ``F`` (paper §2.2, appendix B.2): the target profile is the sample's
profile with the filters of ``F`` multiplied by a boost factor (top ``k = 10`` filters, ``x100``); the
input gradient of the cosine similarity between the sample's profile and that (constant) target shows the
pixels that drive those filters' saliency.
"""

from __future__ import annotations

import torch

from icasc.saliency.blur import gaussian_blur

__all__ = ["boost_profile", "cv2_gaussian_sigma", "postprocess_input_saliency", "top_filters"]


def top_filters(saliency: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Indices of the ``k`` largest entries of each profile, in descending order of saliency.

    Args:
        saliency: ``[B, n_filters]`` profiles (or one ``[n_filters]`` profile), raw or standardised.
        k: How many (1 <= k <= n_filters).

    Returns:
        ``[B, k]`` (or ``[k]``) int64 column indices.
    """
    if not isinstance(saliency, torch.Tensor) or saliency.dim() not in (1, 2):
        shape = tuple(saliency.shape) if isinstance(saliency, torch.Tensor) else type(saliency).__name__
        raise ValueError(f"saliency must be [n_filters] or [B, n_filters], got {shape}")
    n = saliency.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] (the number of filters), got {k!r}")
    return torch.topk(saliency.detach(), k, dim=-1, largest=True, sorted=True).indices


def boost_profile(profile: torch.Tensor, filters: torch.Tensor, boost: float = 100.0) -> torch.Tensor:
    """The target profile of input-space saliency: ``profile`` with chosen filters times ``boost``.

    Args:
        profile: ``[B, n_filters]`` profiles (the standardised ones when reference stats exist, as in the
            authors' release).
        filters: ``[B, k]`` column indices per sample, or ``[k]`` shared by all samples.
        boost: The factor (appendix B.2: 100).

    Returns:
        A detached ``[B, n_filters]`` copy; only the chosen columns differ from ``profile``.
    """
    if profile.dim() != 2:
        raise ValueError(f"profile must be [B, n_filters], got shape {tuple(profile.shape)}")
    filters = torch.as_tensor(filters, device=profile.device).long()
    if filters.dim() == 1:
        filters = filters.expand(profile.shape[0], -1)
    if filters.dim() != 2 or filters.shape[0] != profile.shape[0]:
        raise ValueError(
            f"filters must be [k] or [B={profile.shape[0]}, k] column indices, got {tuple(filters.shape)}"
        )
    n = profile.shape[1]
    if filters.numel() and (int(filters.min()) < 0 or int(filters.max()) >= n):
        raise ValueError(f"filter indices must lie in [0, {n}), got {filters.tolist()}")
    target = profile.detach().clone()
    factor = torch.ones_like(target).scatter_(1, filters, float(boost))
    return target * factor


def cv2_gaussian_sigma(kernel_size: int) -> float:
    """OpenCV's sigma for ``GaussianBlur(img, (k, k), 0)``: ``0.3 * ((k - 1) / 2 - 1) + 0.8`` (0.8 at k=3)."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8


def postprocess_input_saliency(
    maps: torch.Tensor,
    percentile: float = 90.0,
    cap_percentile: float | None = 99.0,
    blur: int | None = 3,
    sigma: float | None = None,
) -> torch.Tensor:
    """The visualisation of appendix B.2: threshold at a percentile, scale to ``[0, 1]``, Gaussian blur.

    Per map, values below the ``percentile``-th percentile are raised to it and values above the
    ``cap_percentile``-th are lowered to it (the authors' release caps at 99 so one pixel does not flatten
    the rest), the result is min-max scaled to ``[0, 1]`` (0 below the threshold; a constant map gives 0)
    and blurred with a ``blur x blur`` Gaussian (reflect borders) of std ``sigma``, by default OpenCV's
    choice for ``GaussianBlur(..., (3, 3), 0)`` that the authors call.

    Args:
        maps: ``[B, H, W]`` (or ``[H, W]``) non-negative maps, e.g. from
            :meth:`~icasc.saliency.parameter.ParameterSaliency.input_saliency`.
        percentile: Threshold percentile in ``[0, 100)`` (B.2: 90).
        cap_percentile: Cap percentile in ``(percentile, 100]``, or ``None`` for the maximum.
        blur: Odd kernel size, or ``None``/1 for no blur (B.2: 3).
        sigma: Blur std in pixels; ``None``: :func:`cv2_gaussian_sigma`.

    Returns:
        Maps of the input's shape with values in ``[0, 1]``.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() not in (2, 3) or not maps.dtype.is_floating_point:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps must be float [B, H, W] or [H, W], got {shape}")
    cap = 100.0 if cap_percentile is None else cap_percentile
    if not 0 <= percentile < cap <= 100:
        raise ValueError(
            f"need 0 <= percentile < cap_percentile <= 100, got percentile={percentile}, "
            f"cap_percentile={cap_percentile}"
        )
    single = maps.dim() == 2
    batch = maps.detach()[None] if single else maps.detach()
    flat = batch.flatten(1).float()
    q = torch.quantile(flat, torch.tensor([percentile / 100, cap / 100], device=flat.device), dim=1)
    low, high = q[0].view(-1, 1, 1).to(batch.dtype), q[1].view(-1, 1, 1).to(batch.dtype)
    span = high - low
    scaled = torch.where(span > 0, (batch.clamp(low, high) - low) / span.clamp_min(1e-30), 0.0)
    if blur is not None and blur > 1:
        if blur % 2 == 0:
            raise ValueError(f"blur must be an odd kernel size (or None), got {blur}")
        scaled = gaussian_blur(scaled[:, None], blur, cv2_gaussian_sigma(blur) if sigma is None else sigma)[
            :, 0
        ]
    return scaled[0] if single else scaled
