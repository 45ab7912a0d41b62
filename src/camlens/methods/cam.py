"""CAM: class activation mapping from a GAP -> Linear head (Zhou et al. 2016)."""

from __future__ import annotations

import torch


def cam(activations: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """Class activation map (Zhou et al., "Learning Deep Features for Discriminative Localization",
    CVPR 2016).

    For a network whose logits are ``y_c = sum_k W[c, k] * mean_ij A[k, i, j] + b_c`` (global average
    pooling, then one linear layer), the map of class ``c`` is::

        M_c(i, j) = sum_k W[c, k] * A[k, i, j]

    so that ``y_c = mean_ij M_c(i, j) + b_c``: the logit is the map's average. The bias is left out.

    activations: [N, K, h, w]; class_weights: [N, K], the head's row for each map's class.
    Returns [N, h, w] (before ReLU and normalization).

    >>> A = torch.ones(1, 2, 2, 2); W = torch.tensor([[1.0, -0.5]])
    >>> cam(A, W)[0]
    tensor([[0.5000, 0.5000],
            [0.5000, 0.5000]])
    """
    return torch.einsum("nk,nkhw->nhw", class_weights.to(activations.dtype), activations)
