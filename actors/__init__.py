"""Actors: conversation actors, orchestrator, agent loop, LLM backends, tools, jobs."""
