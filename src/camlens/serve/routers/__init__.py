"""The HTTP API, an ``APIRouter`` per concern: the model and its methods, explain, results,
runs. Each takes only the query parameters and form fields it declares
(:func:`camlens.serve.parameters.only_known_parameters`)."""
