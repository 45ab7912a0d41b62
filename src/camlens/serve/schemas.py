"""The JSON the HTTP API sends: typed models, which also document it on the OpenAPI page."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every error: one line saying what is wrong and, for a bad request parameter, its name."""

    detail: str = Field(examples=["top must be at least 1, not 0"])
    parameter: str | None = Field(default=None, examples=["top"])


class Preprocessing(BaseModel):
    input_size: tuple[int, int] = Field(description="(height, width) of the model input")
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class LayerOut(BaseModel):
    name: str
    kind: str = Field(description="the module's class name")
    shape: list[int] = Field(description="output [C, H, W] for one image")


class ModelOut(BaseModel):
    name: str
    num_classes: int
    classes: list[str] = Field(description="class names, by index")
    preprocessing: Preprocessing
    layers: list[LayerOut] = Field(description="layers with a spatial output, in forward order")
    auto_layer: str = Field(description="the layer used when none is asked for")


class MethodOut(BaseModel):
    name: str
    needs: str = Field(description="head, gradients, activations or scores")
    summary: str
    paper: str


class MethodsOut(BaseModel):
    methods: list[MethodOut]
    groups: dict[str, list[str]] = Field(description="names that stand for several methods")


class ServerOut(BaseModel):
    version: str
    max_upload_bytes: int
    max_pixels: int
    max_maps: int = Field(description="maps one request may ask for (classes x methods x layers)")
    max_batch: int
    max_queue: int
    results_kept: int = Field(description="explanations whose files stay available, newest first")
    colormaps: list[str] = Field(description="common colormaps (any matplotlib name works)")
    runs: bool = Field(description="a run folder is served under /runs/")


class PredictionOut(BaseModel):
    class_index: int
    label: str
    score: float = Field(description="softmax probability")


class BoxOut(BaseModel):
    box: list[int | float] = Field(description="[x0, y0, x1, y1] in the photo's pixels")
    score: float = Field(description="share of the map's mass inside the box")


class MapOut(BaseModel):
    index: int = Field(description="the map's number in this result, for its file URLs")
    class_index: int
    label: str
    score: float
    method: str
    layer: str
    flat: bool = Field(description="the method gave a constant map (returned as zeros)")
    peak: tuple[int, int] = Field(description="(x, y) of the map's maximum in the photo's pixels")
    boxes: list[BoxOut] | None = Field(default=None, description="when boxes were asked for")
    overlay: str = Field(description="URL of the overlay PNG (a data: URL with inline=true)")
    heatmap: str = Field(description="URL of the coloured map alone, PNG at the photo's size")
    map: str = Field(
        description="URL of the map, float32 .npy [height, width] in [0, 1] at the photo's size "
        "(a data: URL with inline=true)"
    )


class ImageOut(BaseModel):
    name: str
    size: tuple[int, int] = Field(description="(width, height)")
    url: str = Field(description="the photo as explained (upright RGB), JPEG")


class ExplainOut(BaseModel):
    id: str
    url: str = Field(description="this result again, while it is kept")
    model: str
    image: ImageOut
    methods: list[str]
    layers: list[str]
    predictions: list[PredictionOut] = Field(description="the top 5, best first")
    explanations: list[MapOut]
