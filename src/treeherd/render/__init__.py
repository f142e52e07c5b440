"""Pure renderers: configuration text from the routing table (nginx), with Jinja2 templates shipped in
the package."""
