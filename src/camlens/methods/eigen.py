"""Eigen-CAM and EigenGrad-CAM: maps from the first principal component of the target layer's
activations (or of gradient x activation), with the sign fixed so that a map never flips."""

from __future__ import annotations

import torch


def first_component(features: torch.Tensor) -> torch.Tensor:
    """Projection of each location's feature vector on the first principal component.

    ``features`` [N, K, h, w] is read, per image, as ``L = h * w`` observations (the locations) of
    ``K`` variables (the channels). With ``X`` the [L, K] matrix centred over locations
    (``X = F - mean_l F``) and ``v`` the top right singular vector of ``X``::

        P(i, j) = X[(i, j), :] . v        (= s_1 * u_1, the first left singular vector scaled)

    The sign of a singular vector is arbitrary (``(u, v)`` and ``(-u, -v)`` are equally valid), so
    it is fixed here: ``P`` must correlate positively with the channel mean of the features,
    ``m(i, j) = mean_k F[k, i, j]`` (where that correlation is exactly zero, the entry of ``P``
    largest in magnitude must be positive). The same input therefore always gives the same map.

    Computed in float64 from the smaller of the two Gram matrices (``X X^T``, L x L, or
    ``X^T X``, K x K) with a symmetric eigensolver, image by image, so the result does not depend
    on the image's position in the batch. An image whose features are not all finite gets NaN
    (which the explainer reports as a flat map). Returns [N, h, w] in the features' dtype.
    """
    n, k, h, w = features.shape
    finite = torch.isfinite(features).flatten(1).all(dim=1)
    f = torch.where(finite[:, None, None, None], features, 0).double()
    f = f.reshape(n, k, h * w).transpose(1, 2)  # [N, L, K]
    x = f - f.mean(dim=1, keepdim=True)
    if h * w <= k:
        values, vectors = torch.linalg.eigh(x @ x.transpose(1, 2))  # ascending eigenvalues
        projection = vectors[..., -1] * values[..., -1].clamp(min=0).sqrt()[:, None]
    else:
        _, vectors = torch.linalg.eigh(x.transpose(1, 2) @ x)
        projection = (x @ vectors[..., -1:])[..., 0]
    reference = f.mean(dim=2)  # [N, L]: channel mean at each location
    agreement = (projection * (reference - reference.mean(dim=1, keepdim=True))).sum(dim=1)
    largest = projection.gather(1, projection.abs().argmax(dim=1, keepdim=True))[:, 0]
    sign = torch.where(agreement != 0, agreement.sign(), largest.sign())
    projection = projection * torch.where(sign != 0, sign, 1)[:, None]
    projection = torch.where(finite[:, None], projection, torch.nan)
    return projection.reshape(n, h, w).to(features.dtype)


def eigencam(activations: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM (Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components",
    IJCNN 2020): the activations projected on their first principal component::

        M = ReLU(X v_1),   X = A as [h*w, K], centred over locations,  v_1 its top right singular
                           vector, sign fixed (see :func:`first_component`)

    No class enters: every class of an image gets the same map. pytorch-grad-cam computes the same
    projection but leaves the sign to the SVD, so its map can come out inverted.
    """
    return first_component(activations)


def eigengradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """EigenGrad-CAM (as in pytorch-grad-cam): Eigen-CAM on the element-wise product of the class
    score's gradients and the activations, which makes it class-specific::

        M = ReLU(X v_1),   X = (G * A) as [h*w, K], centred over locations

    The sign is fixed as in :func:`first_component`: the map correlates positively with
    ``mean_k G[k] * A[k]``, which is HiResCAM's map divided by K.
    """
    return first_component(gradients * activations)
