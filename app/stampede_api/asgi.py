"""The ASGI entry point gunicorn's uvicorn workers import: ``stampede_api.asgi:app``.

Importing it reads the settings and configures JSON logs; it opens nothing, so the gunicorn master never
holds a connection across the fork (gunicorn loads the app in each worker; ``preload_app`` stays off).
"""

from __future__ import annotations

from stampede import logs
from stampede.settings import load
from stampede_api.settings import ApiSettings

from .app import create_app

settings = load(ApiSettings)
logs.configure(settings.log_level, settings.log_json)
app = create_app(settings)
