"""Keras's names for the layers of a VGG network: ``block5_conv3`` for torchvision's ``features.29``.

Write-ups of CAM and Grad-CAM on VGG16 and VGG19 name their layers as Keras does (``block5_conv3``,
``block4_pool``); torchvision numbers the same layers inside ``features``. Keras counts the conv
layers of each block (a block ends with its max pooling) and a Keras conv layer's output includes its
ReLU, so ``blockB_convC`` is the ReLU after the ``C``-th conv of block ``B`` and ``blockB_pool`` the
max pooling that ends it:

========================  ==================  ==================
Keras                     torchvision VGG16   torchvision VGG19
========================  ==================  ==================
``block1_conv1``          ``features.1``      ``features.1``
``block1_pool``           ``features.4``      ``features.4``
``block5_conv3``          ``features.29``     ``features.33``
``block5_conv4``          --                  ``features.35``
``block5_pool``           ``features.30``     ``features.36``
========================  ==================  ==================

The Caffe names of the original VGG release, which keras-cam and other write-ups use, are
accepted too: ``convB_C`` is ``blockB_convC`` (``conv5_3`` is ``block5_conv3``) and ``poolB`` is
``blockB_pool``.

The names are read off the network's structure, not its class: a ``features`` sequence of 3x3
convolutions each followed by a ReLU, in blocks closed by max pooling (torchvision's VGG11 to VGG19
without batch norm, and the backbone of a model built on them with
:func:`camlens.build_cam_model`, which drops the last pooling). Any other network has no such names.
"""

from __future__ import annotations

from torch import nn


def keras_names(net: nn.Module) -> dict[str, str]:
    """Keras-style names of ``net``'s VGG layers -> their names in ``net`` (empty if it has none)."""
    features = getattr(net, "features", None)
    if not isinstance(features, nn.Sequential):
        return {}
    names: dict[str, str] = {}
    block, conv = 1, 0
    pending = False  # a conv waiting for its ReLU
    for index, module in features.named_children():
        here = f"features.{index}"
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and not pending:
            conv, pending = conv + 1, True
        elif isinstance(module, nn.ReLU) and pending:
            names[f"block{block}_conv{conv}"] = here
            pending = False
        elif isinstance(module, nn.MaxPool2d) and conv and not pending:
            names[f"block{block}_pool"] = here
            block, conv = block + 1, 0
        else:
            return {}  # not a plain VGG sequence (batch norm, another kernel, another layer)
    return names if not pending else {}


def caffe_names(net: nn.Module) -> dict[str, str]:
    """The Caffe names of ``net``'s VGG layers (``conv5_3``, ``pool5``) -> their names in ``net``."""
    out: dict[str, str] = {}
    for name, here in keras_names(net).items():
        block, _, part = name.removeprefix("block").partition("_")
        caffe = f"pool{block}" if part == "pool" else f"conv{block}_{part.removeprefix('conv')}"
        out[caffe] = here
    return out


def vgg_names(net: nn.Module) -> dict[str, str]:
    """Every name a VGG layer answers to besides its own: Keras's, then Caffe's."""
    return {**keras_names(net), **caffe_names(net)}
