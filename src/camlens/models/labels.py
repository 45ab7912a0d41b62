"""Class names: ImageNet's from timm, or a model's own list."""

from __future__ import annotations

from functools import cache


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class descriptions, by index ("Egyptian cat" is 285), from timm."""
    from timm.data.imagenet_info import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The WordNet ids of the 1000 ImageNet-1k classes, by index (``n02930766`` is 468, "cab,
    hack, taxi, taxicab"), from timm."""
    from timm.data.imagenet_info import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_label_name(i) for i in range(info.num_classes()))


def default_labels(num_classes: int) -> tuple[str, ...]:
    """ImageNet's names for a 1000-class model; ``class 0``, ``class 1``... otherwise."""
    if num_classes == 1000:
        return imagenet_labels()
    return tuple(f"class {i}" for i in range(num_classes))
