"""The ClientApp named by pyproject.toml (its handlers: client_app/handlers.py)."""

from client_app.handlers import app

__all__ = ["app"]
