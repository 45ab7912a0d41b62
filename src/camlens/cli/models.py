"""``camlens methods`` and ``camlens layers``: what can be explained, and where."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from camlens.cli.common import (
    DeviceOpt,
    ModelOpt,
    ScoresOpt,
    WeightsOpt,
    app,
    bad_input,
    model_from_options,
    out_console,
    say,
)


@app.command()
def methods() -> None:
    """The methods, one line each, with their paper."""
    from camlens.options import METHOD_INFO

    table = Table(show_header=True, header_style="bold", box=None)
    for column in ("method", "needs", "what it does", "paper"):
        table.add_column(column)
    for m in METHOD_INFO:
        table.add_row(m.name, m.needs, m.summary, m.paper)
    out_console.print(table)


@app.command()
def layers(
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    device: DeviceOpt = "cpu",
    every: Annotated[
        bool,
        typer.Option(
            "--all",
            help="every layer, spatial or not, with its output shape (as Keras's "
            "model.summary() lists them)",
        ),
    ] = False,
    scores: ScoresOpt = None,
) -> None:
    """The model's layers with spatial output, their maps' shapes and how each output becomes maps
    (conv, channels-last, tokens on a grid); * marks the automatic choice: the last layer with a
    spatial map (a nested base model's output, the layer that feeds its GAP -> Dense head), or
    the one before a final pooling that halves its grid, unless the pooled one feeds a GAP ->
    Linear head. A VGG's layers also show their Keras names (block5_conv3); --layer takes those
    and the Caffe names (conv5_3) too. The last line says how the outputs are scored (--scores
    sets it, as for explain)."""
    from camlens.layers import auto_layer, cam_head_of, every_layer, spatial_layers, warn_if_broken

    with bad_input():
        loaded = model_from_options(model, weights, device, scores)
        found = spatial_layers(loaded)
        chosen = auto_layer(loaded, found)
        warn_if_broken(loaded)
        head = cam_head_of(loaded, chosen)
    if every:
        spatial = {info.name: info for info in found}
        table = Table(show_header=True, header_style="bold", box=None)
        for column in ("", "layer", "type", "output shape", "maps [C, H, W]"):
            table.add_column(column)
        for name, kind, dims in every_layer(loaded):
            info = spatial.get(name)
            maps = "x".join(map(str, info.shape)) if info is not None else ""
            row = ["*" if name == chosen else "", name, kind, str(list(dims)), maps]
            table.add_row(*map(escape, row))
        out_console.print(table)
        say(f"* automatic target layer of {loaded.name}: {chosen}{_head_note(head)}")
        say(_outputs_note(loaded))
        return
    aliases: dict[str, str] = {}  # a layer's first other name: its Keras name in a VGG
    for alias, name in loaded.layer_names().items():
        aliases.setdefault(name, alias)
    table = Table(show_header=True, header_style="bold", box=None)
    columns = ("", "layer", "Keras name", "type", "maps [C, H, W]", "adapter")
    for column in columns if aliases else columns[:2] + columns[3:]:
        table.add_column(column)
    for info in found:
        mark = "*" if info.name == chosen else ""
        shape = "x".join(map(str, info.shape))
        extra = [aliases.get(info.name, "")] if aliases else []
        table.add_row(*map(escape, [mark, info.name, *extra, info.kind, shape, info.adapter]))
    out_console.print(table)
    say(f"* automatic target layer of {loaded.name}: {chosen}{_head_note(head)}")
    say(_outputs_note(loaded))
    if aliases:
        say("--layer also takes their Caffe names: conv5_3 for block5_conv3, pool5 for block5_pool")


def _outputs_note(model: Any) -> str:
    """The model's kind and outputs: ``kind: classifier; outputs: 1000, scored by softmax``."""
    if model.kind == "classifier":
        return f"kind: classifier; outputs: {model.num_classes}, scored by {model.scores}"
    return f"kind: {model.kind}; classes: {model.num_classes}"


def _head_note(head: str | None) -> str:
    return "" if head is None else f" (it feeds the GAP -> Linear head {head!r}: CAM applies)"
