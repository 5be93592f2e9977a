"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", 2016, section 4.2).

The network is a 3x3 convolution with 16 filters followed by three stages of ``n`` basic blocks each,
with 16, 32 and 64 channels and strides 1, 2 and 2, then global average pooling and a linear layer.
The depth is ``6n + 2`` (20, 32, 44, 56, 110, ...).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ShortcutType = Literal["A", "B"]


class ShortcutA(nn.Module):
    """Parameter-free shortcut (option A): stride subsampling plus zero-padding of new channels.

    Args:
        in_channels: Channels of the block input.
        out_channels: Channels of the block output (``>= in_channels``).
        stride: Spatial subsampling factor.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"option-A shortcut cannot reduce channels ({in_channels} -> {out_channels}); "
                "use shortcut='B'"
            )
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample ``x`` spatially and append zero channels."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            # F.pad pads the last dims first: (W_left, W_right, H_top, H_bottom, C_front, C_back).
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}, stride={self.stride}"


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution.
        shortcut: ``"A"`` (identity / zero-padding) or ``"B"`` (1x1 conv + BN projection) used when
            the shape changes; identity otherwise.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, shortcut: ShortcutType = "A"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ShortcutA(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs with stages ``layer1``, ``layer2``, ``layer3`` and head ``fc``.

    Args:
        depth: Network depth, ``6n + 2`` (e.g. 20, 32, 56, 110).
        num_classes: Number of output classes.
        shortcut: ``"A"`` (paper default for CIFAR) or ``"B"``; see :class:`CifarBasicBlock`.
        in_channels: Number of input image channels.

    Raises:
        ValueError: If ``depth`` is not of the form ``6n + 2`` or ``shortcut`` is not "A"/"B".
    """

    def __init__(
        self, depth: int, num_classes: int = 10, shortcut: ShortcutType = "A", in_channels: int = 3
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"CIFAR ResNet depth must be 6n+2 with n >= 1 (e.g. 20, 32, 56, 110), got {depth}"
            )
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        n = (depth - 2) // 6
        self.depth = depth
        self.shortcut_type = shortcut
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_stage(16, 16, n, stride=1, shortcut=shortcut)
        self.layer2 = self._make_stage(16, 32, n, stride=2, shortcut=shortcut)
        self.layer3 = self._make_stage(32, 64, n, stride=2, shortcut=shortcut)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

        # He et al. initialisation for convolutions; BN starts as the identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_stage(
        in_channels: int, out_channels: int, n: int, stride: int, shortcut: ShortcutType
    ) -> nn.Sequential:
        blocks = [CifarBasicBlock(in_channels, out_channels, stride, shortcut)]
        blocks += [CifarBasicBlock(out_channels, out_channels, 1, shortcut) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``[B, num_classes]``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))
