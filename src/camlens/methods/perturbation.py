"""Perturbation methods: channel weights from the class scores of perturbed inputs (Score-CAM,
SS-CAM, IS-CAM) or of perturbed activations (Ablation-CAM), no gradient.

Each method is a function ``fn(activations [N, K, h, w], scorer) -> weights [N, D, K]``, the weight
of channel ``k`` for the ``d``-th requested class of image ``n``; the explainer makes the map
``sum_k w[n, d, k] * A[n, k]`` (then ReLU and normalization). The :class:`Scorer` runs the model:
one masked (or ablated) pass gives the logits of every class, so all requested classes of all
images share the same passes, batched across images and chunked by a memory budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from camlens.errors import MethodError
from camlens.maps import CONSTANT_TOLERANCE
from camlens.progress import Event, Progress
from camlens.replay import Replay

Build = Callable[[int, int], torch.Tensor]
Score = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
MaskNormalize = Literal["upsampled", "activations"]


class Scorer:
    """What a perturbation method may ask of the model, for a batch of ``N`` images with ``D``
    targets each: ``score(outputs [M, C], rows [M], embeddings [M, E] or None) -> [M, D]`` scores
    the outputs of rows that belong to the images ``rows`` (a class's logit, a contrast, a
    similarity: see :class:`camlens.scoring.Goals`); ``embedding``, when a target reads one,
    records it (:class:`camlens.scoring.Embedding`) during the passes.

    ``x`` [N, 3, H, W] are the inputs, ``logits`` their logits and ``activations`` the target
    layer's output on them. :meth:`score_inputs` and
    :meth:`score_activations` take a number of rows, the image each row belongs to, and a
    ``build(start, stop)`` function that makes the rows ``start:stop`` (masked inputs, or edited
    activations of the target layer); they run the model on as many rows at a time as
    ``max_batch_memory`` (bytes) allows, in inference mode, and return each row's scores for the
    targets of its image, [rows, D]. The rows are never all built at once.

    Speed knobs that change the result, off by default: ``channels`` keeps only that many channels
    per image, those whose activation varies most over the locations (as Faster Score-CAM does);
    ``resolution`` runs the masked passes at that fraction of the input size.

    ``progress`` gets ``Event("passes", done, total)`` as each method's passes go (``done == 0``
    when a method starts).
    """

    def __init__(
        self,
        net: nn.Module,
        x: torch.Tensor,
        logits: torch.Tensor,
        score: Score,
        depth: int,
        activations: torch.Tensor,
        *,
        replay: Callable[[], Replay] | None = None,
        row_bytes: int | None = None,
        max_batch_memory: int = 512 * 2**20,
        channels: int | None = None,
        resolution: float | None = None,
        channels_last: bool = False,
        progress: Progress | None = None,
        embedding: Any = None,
    ) -> None:
        self.net = net
        self.x = x
        self.logits = logits
        self.score = score
        self.depth = depth
        self.embedding = embedding
        self.activations = activations
        self.max_batch_memory = max_batch_memory
        self.channels = channels
        self.resolution = resolution
        self.channels_last = channels_last
        self.progress = progress
        self.passes = 0  # rows run through the model so far
        self._replay_factory = replay
        self._replay: Replay | None = None
        height, width = x.shape[-2:]
        if resolution is not None and resolution != 1:
            self.pass_size = (max(1, round(height * resolution)), max(1, round(width * resolution)))
            self._images = F.interpolate(
                x, self.pass_size, mode="bilinear", align_corners=False, antialias=True
            )
        else:
            self.pass_size = (int(height), int(width))
            self._images = x
        self.row_bytes = row_bytes or 4 * x[0].numel() * 8

    @property
    def replay(self) -> Replay:
        """The network after the target layer (built on first use; see :mod:`camlens.replay`)."""
        if self._replay is None:
            if self._replay_factory is None:
                raise RuntimeError("this scorer has no replay of the target layer")
            self._replay = self._replay_factory()
        return self._replay

    def images(self, rows: torch.Tensor) -> torch.Tensor:
        """The inputs of ``rows`` at the size of the masked passes, [len(rows), 3, H', W']."""
        return self._images[rows]

    def score_input(self, image: torch.Tensor) -> torch.Tensor:
        """The scores of one input [3, H', W'] for the targets of every image, [N, D]."""
        n = len(self.x)
        with torch.inference_mode():
            logits, embeddings = self._recorded(self.net, image[None])
            self.passes += 1
            rows = torch.arange(n, device=self.x.device)
            more = None if embeddings is None else embeddings.expand(n, -1)
            return self.score(logits.expand(n, *logits.shape[1:]), rows, more).float()

    def _recorded(
        self, model: Callable[..., torch.Tensor], *args: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``model(*args)`` and the embedding recorded during it (None without one)."""
        if self.embedding is None:
            return model(*args), None
        found: list[torch.Tensor] = []
        with self.embedding.tap(found):
            out = model(*args)
        if not found:
            raise MethodError(
                f"the similarity's embedding ({self.embedding.describe}) was not run by these "
                "passes"
            )
        return out, found[-1]

    def score_inputs(self, rows: torch.Tensor, build: Build) -> torch.Tensor:
        """Scores of masked inputs (``build`` gives [m, 3, H', W'] for rows ``start:stop``)."""
        pixels = self.pass_size[0] * self.pass_size[1]
        per_row = self.row_bytes * pixels / (self.x.shape[-2] * self.x.shape[-1])
        return self._run(rows, build, self._forward, per_row)

    def score_activations(self, rows: torch.Tensor, build: Build) -> torch.Tensor:
        """Scores of the network replayed after the target layer (``build`` gives activations
        [m, K, h, w] for rows ``start:stop``)."""
        replay = self.replay
        per_row = 4 * self.activations[0].numel() * self.activations.element_size()
        per_row += self.row_bytes if replay.kind == "full" else 0
        return self._run(rows, build, replay, per_row)

    def _forward(self, batch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        reduced = self.pass_size != tuple(self.x.shape[-2:])
        try:
            out: torch.Tensor = self.net(batch)
        except RuntimeError as exc:
            if not reduced:
                raise
            height, width = self.pass_size
            raise MethodError(
                f"fast_resolution {self.resolution:g} runs the masked passes at {width}x{height} "
                f"pixels, which this model cannot take ({str(exc).splitlines()[0]}): give a "
                "larger fraction",
                option="fast_resolution",
            ) from None
        return out

    def _run(
        self,
        rows: torch.Tensor,
        build: Build,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        per_row: float,
    ) -> torch.Tensor:
        total = len(rows)
        out = torch.empty(total, self.depth, device=self.x.device)
        step = max(1, int(self.max_batch_memory // max(per_row, 1)))
        if self.progress is not None:
            self.progress(Event("passes", 0, total))
        with torch.inference_mode():
            for start in range(0, total, step):
                stop = min(start + step, total)
                part = rows[start:stop]
                logits, embeddings = self._recorded(model, build(start, stop), part)
                out[start:stop] = self.score(logits, part, embeddings).float()
                self.passes += stop - start
                if self.progress is not None:
                    self.progress(Event("passes", stop, total))
        return out


def channel_masks(
    activations: torch.Tensor,
    size: tuple[int, int],
    *,
    align_corners: bool = False,
    normalize: MaskNormalize = "upsampled",
) -> torch.Tensor:
    """Score-CAM's masks: activation maps [m, h, w] upsampled (bilinear) to ``size`` and scaled to
    [0, 1] each, ``(U(A) - min U(A)) / (max U(A) - min U(A))``; a constant map gives zeros.

    ``normalize="activations"`` scales before upsampling instead (torchcam's order); the paper
    and pytorch-grad-cam scale after. ``align_corners=True`` is pytorch-grad-cam's upsampling
    (``nn.UpsamplingBilinear2d``); torchcam and this library's map upsampling use ``False``.
    """

    def scale(a: torch.Tensor) -> torch.Tensor:
        low = a.amin(dim=(1, 2), keepdim=True)
        span = a.amax(dim=(1, 2), keepdim=True) - low
        return torch.where(span > 0, (a - low) / torch.where(span > 0, span, 1), 0)

    if normalize == "activations":
        activations = scale(activations)
    up = F.interpolate(activations[:, None], size, mode="bilinear", align_corners=align_corners)
    return up[:, 0] if normalize == "activations" else scale(up[:, 0])


def select_channels(activations: torch.Tensor, channels: int | None) -> torch.Tensor:
    """[N, K] bool: the ``channels`` channels of each image whose activation has the largest
    variance over the locations (ties: the lower index), or all channels for ``None``."""
    n, k = activations.shape[:2]
    if channels is None or channels >= k:
        return torch.ones(n, k, dtype=torch.bool, device=activations.device)
    variance = activations.flatten(2).double().var(dim=2, correction=0)
    order = torch.sort(variance, dim=1, descending=True, stable=True).indices[:, :channels]
    keep = torch.zeros(n, k, dtype=torch.bool, device=activations.device)
    return keep.scatter_(1, order, True)


MaskEdit = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


def masked_scores(
    activations: torch.Tensor,
    scorer: Scorer,
    *,
    samples: int = 1,
    edit: MaskEdit | None = None,
    zero_stays_zero: bool = True,
    align_corners: bool = False,
    normalize: MaskNormalize = "upsampled",
) -> torch.Tensor:
    """The class scores of the inputs masked by each channel, ``Y_c(X * mask_k)`` [N, D, K],
    averaged over ``samples`` versions of each mask, ``edit(masks, sample, channel_indices)``
    (the masks themselves without ``edit``); channels left out by ``scorer.channels`` get -inf.

    A channel whose activation is constant gives a zero mask, hence the same masked input (zeros)
    for every such channel of every image: when ``edit`` keeps zero masks zero, that input is
    scored once for all of them.
    """
    n, k = activations.shape[:2]
    keep = select_channels(activations, scorer.channels)
    flat = activations.flatten(2)
    constant = flat.amax(dim=2) == flat.amin(dim=2)
    run = keep & ~constant if zero_stays_zero else keep
    pairs = run.nonzero()  # [P, 2]: (image, channel)
    count = len(pairs)
    rows = pairs[:, 0].repeat(samples)

    def build(start: int, stop: int) -> torch.Tensor:
        index = torch.arange(start, stop, device=pairs.device)
        sample, pair = index // count, index % count
        image, channel = pairs[pair, 0], pairs[pair, 1]
        masks = channel_masks(
            activations[image, channel],
            scorer.pass_size,
            align_corners=align_corners,
            normalize=normalize,
        )
        if edit is not None:
            parts = [
                edit(masks[sample == s], int(s), channel[sample == s])
                for s in torch.unique(sample).tolist()
            ]
            masks = torch.cat(parts)  # samples are contiguous and ascending within a chunk
        return scorer.images(image) * masks[:, None]

    scores = torch.full((n, scorer.depth, k), -math.inf, device=activations.device)
    if count:
        found = scorer.score_inputs(rows, build).reshape(samples, count, -1).mean(dim=0)
        scores[pairs[:, 0], :, pairs[:, 1]] = found
    if zero_stays_zero and bool((keep & constant).any()):
        blank = scorer.score_input(torch.zeros(3, *scorer.pass_size, device=activations.device))
        image, channel = (keep & constant).nonzero().unbind(1)
        scores[image, :, channel] = blank[image]
    return scores


def channel_softmax(scores: torch.Tensor) -> torch.Tensor:
    """``softmax_k`` of class scores [N, D, K] (-inf for channels left out), the weights of the
    Score-CAM family; all zero for an (image, class) whose two or more scored channels all got
    the same score (to :data:`~camlens.maps.CONSTANT_TOLERANCE` of its size). Such scores carry
    no information on where the class is (a model whose logits are constant, say): the uniform
    weights a softmax would give them make the mean activation, the same map for every class,
    where the map should say that nothing was found (flat)."""
    finite = torch.isfinite(scores)
    high = torch.where(finite, scores, -math.inf).amax(dim=-1)
    low = torch.where(finite, scores, math.inf).amin(dim=-1)
    size = torch.maximum(high.abs(), low.abs())
    same = finite.sum(dim=-1) >= 2
    same &= ~(high - low > CONSTANT_TOLERANCE * size)
    weights = torch.softmax(scores, dim=-1)
    nothing = same | ~finite.any(dim=-1)
    return torch.where(nothing[..., None], torch.zeros_like(weights), weights)


def scorecam(
    activations: torch.Tensor,
    scorer: Scorer,
    *,
    mask_align_corners: bool = False,
    mask_normalize: MaskNormalize = "upsampled",
) -> torch.Tensor:
    """Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
    Neural Networks", CVPR workshops 2020)::

        H_k = s(Up(A_k)),   s(U) = (U - min U) / (max U - min U)       (0 for a constant map)
        w_k = softmax_k( Y_c(X * H_k) - Y_c(X_b) )
        M   = ReLU(sum_k w_k * A_k)

    (``w = 0``, a flat map, where every ``Y_c(X * H_k)`` is the same: :func:`channel_softmax`.)

    ``Y_c`` is the class logit and ``X_b`` a baseline input. The baseline's score ``Y_c(X_b)`` is
    the same for every channel ``k``, and a softmax does not change when one constant is subtracted
    from all its arguments (``exp(a - b) / sum exp(a' - b) = exp(a) / sum exp(a')``), so no
    baseline pass is run. torchcam subtracts the score of the unmasked input, pytorch-grad-cam
    nothing: the same weights.

    Where the implementations really differ, and what ``with_options`` can switch:

    - the order of upsampling and scaling (``mask_normalize``): the paper and pytorch-grad-cam
      upsample and then scale to [0, 1], so every mask spans [0, 1]; torchcam scales the small map
      and then upsamples, so a mask's extremes fall between pixels and are not reached;
    - the upsampling grid (``mask_align_corners``): pytorch-grad-cam upsamples with
      ``align_corners=True``, torchcam (and camlens' own map upsampling) with ``False``;
    - the paper's reference code weighs each map by the masked input's class *probability*
      (softmax over classes) and takes no softmax over channels; the paper's equation, both peers
      and camlens take the softmax over channels of the class *logits*.

    Masks of constant channels are all zero (so is the masked input): scored once per call.
    Returns weights [N, D, K].
    """
    scores = masked_scores(
        activations, scorer, align_corners=mask_align_corners, normalize=mask_normalize
    )
    return channel_softmax(scores)


def noise(seed: int, sample: int, channel: int, size: tuple[int, int], std: float) -> torch.Tensor:
    """SS-CAM's noise for one mask: N(0, std^2) of ``size``, from a generator seeded by
    ``(seed, sample, channel)``, so it does not depend on batching, chunking or the image."""
    generator = torch.Generator().manual_seed(
        ((seed * 1_000_003 + sample) * 1_000_003 + channel) % 2**63
    )
    return torch.randn(size, generator=generator) * std


def sscam(
    activations: torch.Tensor,
    scorer: Scorer,
    *,
    samples: int = 10,
    std: float = 2.0,
    seed: int = 0,
    mask_align_corners: bool = False,
    mask_normalize: MaskNormalize = "upsampled",
) -> torch.Tensor:
    """SS-CAM (Wang, Naidu et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature
    Localization", 2020): Score-CAM with each mask's score averaged over noisy copies::

        w_k = softmax_k( (1 / S) sum_s Y_c(X * (H_k + e_{s,k})) ),   e_{s,k} ~ N(0, std^2) per pixel

    (``H_k`` as in :func:`scorecam`; the baseline cancels as there). ``std=2.0`` is torchcam's
    default; ``samples`` is 10 here (torchcam: 35): each sample costs a full Score-CAM. The noise
    comes from :func:`noise`, seeded by ``(seed, s, k)``: the same input gives the same map.
    """
    height, width = scorer.pass_size

    def add_noise(masks: torch.Tensor, s: int, channel: torch.Tensor) -> torch.Tensor:
        if std == 0:
            return masks
        grain = [noise(seed, s, int(c), (height, width), std) for c in channel.tolist()]
        return masks + torch.stack(grain).to(masks.device) if grain else masks

    scores = masked_scores(
        activations,
        scorer,
        samples=samples,
        edit=add_noise,
        zero_stays_zero=std == 0,
        align_corners=mask_align_corners,
        normalize=mask_normalize,
    )
    return channel_softmax(scores)


def iscam(
    activations: torch.Tensor,
    scorer: Scorer,
    *,
    samples: int = 10,
    mask_align_corners: bool = False,
    mask_normalize: MaskNormalize = "upsampled",
) -> torch.Tensor:
    """IS-CAM (Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based explanations",
    2020): Score-CAM with each mask's score integrated along a path of growing masks::

        c_i = sum_{j=1..i} j / S                     (i = 1..S)
        w_k = softmax_k( (1 / S) sum_i Y_c(X * c_i H_k) )

    (``H_k`` as in :func:`scorecam`; the baseline cancels as there). The coefficients are
    torchcam's (they grow past 1 to (S + 1) / 2).
    """
    coefficients = [sum(j / samples for j in range(1, i + 1)) for i in range(1, samples + 1)]

    def scale(masks: torch.Tensor, s: int, channel: torch.Tensor) -> torch.Tensor:
        return masks * coefficients[s]

    scores = masked_scores(
        activations,
        scorer,
        samples=samples,
        edit=scale,
        align_corners=mask_align_corners,
        normalize=mask_normalize,
    )
    return channel_softmax(scores)


def ablationcam(activations: torch.Tensor, scorer: Scorer) -> torch.Tensor:
    """Ablation-CAM (Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional
    Network via Gradient-free Localization", WACV 2020)::

        w_k = (y_c - y_c^k) / y_c,    M = ReLU(sum_k w_k * A_k)

    ``y_c`` is the class logit and ``y_c^k`` the logit with channel ``k`` of the target layer set
    to zero. Only the layers after the target layer are run again (see :mod:`camlens.replay`),
    and ``y_c`` comes from the same replay, so a channel that changes nothing gets exactly 0. A
    channel that is already all zero is not run (its weight is 0). Where ``y_c = 0`` the drop
    ``y_c - y_c^k`` is used unscaled. pytorch-grad-cam zeroes the channel too when the layer's
    minimum is 0, but puts ``min - 1e7`` in it otherwise; camlens always zeroes, as the paper does.
    Returns weights [N, D, K].
    """
    n, k = activations.shape[:2]
    keep = select_channels(activations, scorer.channels)
    live = keep & (activations.flatten(2) != 0).any(dim=2)
    pairs = live.nonzero()  # [P, 2]: (image, channel)
    rows = torch.cat([torch.arange(n, device=pairs.device), pairs[:, 0]])

    def build(start: int, stop: int) -> torch.Tensor:
        index = torch.arange(start, stop, device=pairs.device)
        edited = activations[rows[start:stop]].clone()
        ablated = index >= n  # the first n rows are the images as they are
        channel = pairs[index[ablated] - n, 1]
        edited[ablated.nonzero()[:, 0], channel] = 0
        return edited

    scores = scorer.score_activations(rows, build)
    base = scores[:n]  # [N, D]
    drop = torch.zeros(n, scorer.depth, k, device=activations.device)
    drop[pairs[:, 0], :, pairs[:, 1]] = base[pairs[:, 0]] - scores[n:]
    scale = torch.where(base != 0, base, 1)
    return drop / scale[:, :, None]
