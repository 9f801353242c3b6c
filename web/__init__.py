"""Jinja2 templates and static files served by the server."""
