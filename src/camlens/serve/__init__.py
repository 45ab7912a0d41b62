"""``camlens serve``: the explorer page and the HTTP API around one model (FastAPI on uvicorn).

>>> from camlens.serve import ServeSettings, create_app     # doctest: +SKIP
>>> app = create_app(camlens.load_model(), ServeSettings(max_batch=8))
"""

from camlens.serve.app import create_app
from camlens.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
