"""ditlab.serve: ``ditlab serve``, a local web page and HTTP API over ``ditlab.sampling.Pipeline``.

    from ditlab.serve import Limits, ServedModels, create_app
    app = create_app(ServedModels({"mnist": Pipeline.load("runs/mnist")}), Limits(max_num=16))

requests.py checks what a request asks for, jobs.py queues and batches the work, models.py turns a batch
into one pipeline call, app.py is the FastAPI app, static/ the page. See docs/serve.md.
"""
from ditlab.serve.app import create_app
from ditlab.serve.models import ServedModels, load_models
from ditlab.serve.requests import ApiError, GenerateRequest, Limits

__all__ = ["ApiError", "GenerateRequest", "Limits", "ServedModels", "create_app", "load_models"]
