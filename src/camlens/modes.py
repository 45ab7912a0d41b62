"""Eval mode for the duration of a call, with each module's own mode restored after, and safe when
several threads run the same model at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

_LOCK = threading.Lock()
# id(net) -> (calls inside eval_mode on it now, the modules that were training when the first began)
_ACTIVE: dict[int, tuple[int, list[nn.Module]]] = {}


@contextmanager
def eval_mode(net: nn.Module) -> Iterator[None]:
    """Runs the body with every module of ``net`` in eval mode (batch-norm statistics, no dropout)
    and gives each module its own mode back afterwards, so a model whose modules were in mixed
    modes gets its own mix back (``net.train(was_training)`` would flatten it).

    Nested and concurrent uses on one network count: the first to enter switches the modules that
    were training, the last to leave switches them back, so a thread never sees the model change
    mode under it because another thread finished. A model already in eval mode (the usual case)
    is only read: ``nn.Module.__setattr__`` on every module costs as much as a tenth of a small
    network's forward pass."""
    key = id(net)
    with _LOCK:
        depth, training = _ACTIVE.get(key, (0, []))
        if depth == 0:
            training = [module for module in net.modules() if module.training]
            for module in training:
                module.training = False
        _ACTIVE[key] = (depth + 1, training)
    try:
        yield
    finally:
        with _LOCK:
            depth, training = _ACTIVE[key]
            if depth == 1:
                for module in training:
                    module.training = True
                del _ACTIVE[key]
            else:
                _ACTIVE[key] = (depth - 1, training)
