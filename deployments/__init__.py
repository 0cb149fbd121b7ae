"""Thin Ray Serve deployments, one per stage, wrapping ``serve_app.pipeline`` (built in the Serve-graph issue)."""
