"""``densenets serve``: an HTTP API and a web page over the model ``densenets predict`` loads.

A thin shell (FastAPI + uvicorn, the ``serve`` extra): requests are decoded and preprocessed by
the code predict uses, gathered into batches by one worker (:mod:`.batching`) and answered with
what predict would print. It imports the engine and deploy packages; nothing imports it.
"""

from .config import ServeConfig

__all__ = ["ServeConfig"]
