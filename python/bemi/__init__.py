"""bemi: pass application context (who, where, how) to the bemi PostgreSQL extension.

    from bemi import Bemi, BemiFastAPIMiddleware, context

Importing the package installs the SQLAlchemy listeners that carry the context with every write.
"""

from bemi import transport as _transport  # noqa: F401  (registers the SQLAlchemy listeners)
from bemi.asgi import BemiASGIMiddleware, BemiFastAPIMiddleware, BemiStarletteMiddleware
from bemi.context import Bemi, BemiContextError, BemiContextTooLarge, context, get_context, set_context
from bemi.flask import BemiFlask

__all__ = [
    "Bemi",
    "BemiASGIMiddleware",
    "BemiContextError",
    "BemiContextTooLarge",
    "BemiFastAPIMiddleware",
    "BemiFlask",
    "BemiStarletteMiddleware",
    "context",
    "get_context",
    "set_context",
]
__version__ = "0.1.0"
