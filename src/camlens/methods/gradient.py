"""The Grad-CAM family: maps from the target layer's activations ``A`` and the gradients ``G`` of the
class score with respect to them. Each function takes ``A`` and ``G`` of shape [N, K, h, w] and returns
the map [N, h, w] before the final ReLU and normalization (which the explainer applies to all)."""

from __future__ import annotations

import torch


def _weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """``sum_k w[n, k] * A[n, k, i, j]``."""
    return torch.einsum("nk,nkhw->nhw", weights, activations)


def gradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017)::

        w_k = mean_ij G[k, i, j]
        M   = ReLU(sum_k w_k * A[k])

    On a GAP -> Linear head ``G[k] = W[c, k] / (h * w)`` everywhere, so Grad-CAM is CAM / (h * w).
    """
    return _weighted_sum(gradients.mean(dim=(2, 3)), activations)


def gradcampp(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al., "Grad-CAM++: Improved Visual Explanations for Deep
    Convolutional Networks", WACV 2018), eq. 19 with the exponential score, whose higher derivatives
    are powers of the first::

        alpha[k, i, j] = G^2 / (2 G^2 + sum_ab A[k, a, b] * G^3)      (0 where the denominator is 0)
        w_k            = sum_ij alpha[k, i, j] * ReLU(G[k, i, j])
        M              = ReLU(sum_k w_k * A[k])

    The gradient of ``exp(y_c)`` is ``exp(y_c) * G``: a positive factor per map, which cancels in alpha
    and only scales ``w``, so it is left out.
    """
    g2 = gradients.pow(2)
    g3 = g2 * gradients
    denominator = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(denominator != 0, g2 / torch.where(denominator != 0, denominator, 1), 0)
    weights = (alpha * gradients.clamp(min=0)).sum(dim=(2, 3))
    return _weighted_sum(weights, activations)


def xgradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation
    of CNNs", BMVC 2020)::

        w_k = sum_ij (A[k, i, j] / sum_ab A[k, a, b]) * G[k, i, j]     (0 where sum_ab A[k] is 0)
        M   = ReLU(sum_k w_k * A[k])
    """
    total = activations.sum(dim=(2, 3), keepdim=True)
    share = activations / torch.where(total != 0, total, 1)
    weights = (share * gradients).sum(dim=(2, 3))
    return _weighted_sum(weights, activations)


def hirescam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks", 2020): the gradient multiplies the activation element-wise::

        M(i, j) = ReLU(sum_k G[k, i, j] * A[k, i, j])

    On a GAP -> Linear head it equals CAM / (h * w) too.
    """
    return (gradients * activations).sum(dim=1)


def gradcam_elementwise(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM element-wise: the ReLU of each gradient-activation product, summed over channels::

        M(i, j) = sum_k ReLU(G[k, i, j] * A[k, i, j])

    Unlike HiResCAM, negative channel contributions cannot cancel positive ones at a pixel.
    """
    return (gradients * activations).clamp(min=0).sum(dim=1)


def layercam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization", IEEE TIP 2021): positive gradients weigh each location::

        M(i, j) = ReLU(sum_k ReLU(G[k, i, j]) * A[k, i, j])
    """
    return (gradients.clamp(min=0) * activations).sum(dim=1)
