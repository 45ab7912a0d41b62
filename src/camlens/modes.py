"""Modes of a user's network, left as found: :func:`eval_mode` for the duration of a call (safe when
several threads run the same model at once), :func:`keep_modes` around training. Both give each
module its own mode back, so a model whose modules were in mixed modes gets its own mix back
(``net.train(was_training)`` would flatten it)."""

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


@contextmanager
def keep_modes(net: nn.Module) -> Iterator[None]:
    """Gives every module of ``net`` the mode it had on entry back on exit, whatever the body set
    (training switches modules to train mode and back on purpose). Not for sharing between
    threads: a body that changes modes changes them for everyone using ``net``."""
    modes = [(module, module.training) for module in net.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            if module.training != training:
                module.training = training
