"""The HTTP edge: the REST API under /api/v1, its OpenAPI document, the event stream, and a client."""
