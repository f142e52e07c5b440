"""Route handlers of the REST API, one module per object kind."""
