"""How a model's outputs become predictions (its *scoring*): ``softmax``, ``sigmoid`` or ``raw``,
set when it is loaded and checked against what the outputs look like."""

from __future__ import annotations

import torch

from camlens.models.model import Model
from camlens.modes import eval_mode
from camlens.targets import TargetError, check_scores


def set_scores(model: Model, scores: str | None) -> Model:
    """Sets ``model.scores`` to ``scores`` after checking it, and returns ``model``.

    ``None`` keeps what the model says (a checkpoint's or a Keras model's scoring), except that a
    one-output model is scored by ``sigmoid`` (a softmax of one output is always 1). Refused, each
    with a :class:`~camlens.targets.TargetError` naming the model: ``softmax`` on a one-output
    model, and ``sigmoid`` or ``softmax`` on a model whose outputs already are probabilities
    (every row of a test input's outputs in [0, 1] and summing to 1: a softmax inside the model).
    """
    if scores is None:
        if model.num_classes == 1 and model.scores == "softmax":
            model.scores = "sigmoid"
        return model
    value = check_scores(scores)
    if value == "softmax" and model.num_classes == 1:
        raise TargetError(
            f"{model.name} has one output: softmax of one output is always 1; use scores "
            "sigmoid (a binary head) or raw (a regression output)"
        )
    if value != "raw" and model.num_classes > 1 and _gives_probabilities(model):
        raise TargetError(
            f"{model.name}'s outputs are already probabilities (each row sums to 1: the model "
            f"ends in a softmax): {value} of them means nothing; remove the model's softmax so it "
            "gives logits, or use scores raw"
        )
    model.scores = value
    return model


def _gives_probabilities(model: Model) -> bool:
    height, width = model.preprocess.input_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, height, width, generator=generator).to(model.device)
    with eval_mode(model.net), torch.inference_mode():
        out = model.net(x)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        return False
    out = out.double()
    in_range = bool(((out >= 0) & (out <= 1)).all())
    return in_range and bool(
        torch.allclose(out.sum(dim=1), torch.ones(len(out), dtype=out.dtype), atol=1e-4)
    )
