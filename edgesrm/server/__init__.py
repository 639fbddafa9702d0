"""An OpenAI-compatible server over one engine: ``create_app(runtime)`` returns the ASGI app
(Starlette), ``edgesrm serve`` runs it under uvicorn."""

from .app import create_app

__all__ = ["create_app"]
