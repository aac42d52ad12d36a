"""The web demo behind `lookalike serve`: a JSON API and a single page over one gallery.

service.py  load the gallery, model and methods once; validate, embed, search, thumbnail
schemas.py  the JSON shapes (so /openapi.json documents every response)
app.py      the FastAPI app factory `create_app(gallery_dir, config)`
static/     the page: index.html, app.js, style.css (no build step, no CDN)
"""

from .app import build_app, create_app
from .service import SearchService, ServerConfig

__all__ = ["create_app", "build_app", "SearchService", "ServerConfig"]
