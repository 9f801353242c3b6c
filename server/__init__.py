"""Docent server: Starlette app, WebSocket endpoints, REST, fan-out."""
