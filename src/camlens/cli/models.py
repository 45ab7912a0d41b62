"""``camlens methods`` and ``camlens layers``: what can be explained, and where."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from camlens.cli.common import (
    DeviceOpt,
    ModelOpt,
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
def layers(model: ModelOpt = None, weights: WeightsOpt = None, device: DeviceOpt = "cpu") -> None:
    """The model's layers with spatial output, their maps' shapes and how each output becomes maps
    (conv, channels-last, tokens on a grid); * marks the automatic choice. A VGG's layers also
    show their Keras names (block5_conv3), which --layer accepts too."""
    from camlens.layers import auto_layer, spatial_layers, warn_if_broken

    with bad_input():
        loaded = model_from_options(model, weights, device)
        found = spatial_layers(loaded)
        chosen = auto_layer(loaded, found)
        warn_if_broken(loaded)
    aliases = {name: alias for alias, name in loaded.layer_names().items()}
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
    say(f"* automatic target layer of {loaded.name}: {chosen}")
    say(f"outputs: {loaded.num_classes}, scored by {loaded.scores}")
