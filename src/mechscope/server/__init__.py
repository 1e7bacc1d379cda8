"""Local web servers: the dashboard (`mechscope serve`) and the steering API
(`mechscope serve-steer`). Surfaces only: every number they show comes from a method."""

from .core import Guard, ModelWorker, Running, check_bind, make_app, serve_forever

__all__ = ["Guard", "ModelWorker", "Running", "check_bind", "make_app", "serve_forever"]
