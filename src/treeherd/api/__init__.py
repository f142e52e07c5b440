"""The HTTP edge: the REST API under /api/v1, its OpenAPI document, the event stream and the agent
channel's endpoint, served by one Litestar app (`app.py`, `server.py`)."""
