"""The small CAM-ready CNN of the synthetic localization benchmark (:mod:`camlens.datasets.synthetic`
makes its images, :func:`camlens.train.train_synthetic_model` trains it, ``camlens synthetic OUT
--train`` does both and writes its weights, which ``load_model("synthetic", weights=...)`` loads)."""

from __future__ import annotations

import torch
from torch import nn

from camlens.images import PreprocessConfig

#: The synthetic classes: each a shape drawn with a texture of its own family (random colours,
#: scales and angles), so that the class shows everywhere on the object.
SYNTHETIC_CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "cross")

#: The synthetic model's preprocessing: the whole image at 64x64, ImageNet mean and std.
SYNTHETIC_PREPROCESS = PreprocessConfig(input_size=(64, 64), interpolation="bilinear")

#: The spec that loads the synthetic model (with ``weights=``).
SYNTHETIC_SPEC = "synthetic"


class SyntheticCNN(nn.Module):
    """Conv -> batch norm -> ReLU blocks (three 3x3, one 1x1) with two 2x2 max pools, then global
    average pooling and one linear layer: a CAM-ready head (``features`` gives
    [N, 2 * width, H / 4, W / 4])."""

    def __init__(self, num_classes: int, width: int = 24) -> None:
        super().__init__()

        def block(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            )

        # The receptive field of ``features`` is 18 pixels: small, so the maps stay sharp.
        self.features = nn.Sequential(
            block(3, width // 2),
            nn.MaxPool2d(2),
            block(width // 2, width),
            nn.MaxPool2d(2),
            block(width, 2 * width),
            block(2 * width, 2 * width, kernel=1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.pool(self.features(x)).flatten(1))
        return out


__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_PREPROCESS",
    "SYNTHETIC_SPEC",
    "SyntheticCNN",
]
