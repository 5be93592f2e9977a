"""A tiny CNN for fast tests and CPU-only default runs."""

from __future__ import annotations

import torch
from torch import nn


def _conv_unit(in_channels: int, out_channels: int, stride: int, batchnorm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not batchnorm)
    ]
    if batchnorm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU())
    return layers


class TinyCNN(nn.Module):
    """Five 3x3 convolutions: ``stem`` -> ``layer1`` -> ``layer2`` -> global average pool -> ``fc``.

    Resolutions for a 64x64 input: stem 32x32 (stride 2), ``layer1`` 16x16 (stride 2), ``layer2`` 8x8
    (stride 2). Widths are ``width``, ``2 * width`` and ``4 * width``; ``layer1`` and ``layer2`` each have
    two convolutions. About 70k parameters at ``width=16``.

    Args:
        num_classes: Number of output classes.
        width: Channels of the stem; the stages use twice and four times this.
        batchnorm: Insert BatchNorm after every convolution.
        in_channels: Number of input image channels.

    Raises:
        ValueError: If ``num_classes`` or ``width`` is smaller than 1.
    """

    def __init__(
        self, num_classes: int = 10, width: int = 16, batchnorm: bool = True, in_channels: int = 3
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.stem = nn.Sequential(*_conv_unit(in_channels, width, 2, batchnorm))
        self.layer1 = nn.Sequential(
            *_conv_unit(width, 2 * width, 2, batchnorm), *_conv_unit(2 * width, 2 * width, 1, batchnorm)
        )
        self.layer2 = nn.Sequential(
            *_conv_unit(2 * width, 4 * width, 2, batchnorm), *_conv_unit(4 * width, 4 * width, 1, batchnorm)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``[B, num_classes]``."""
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))
