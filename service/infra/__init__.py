"""Plumbing with no business rules: settings, the Redis client and its scripts, the request
context, logs, metrics, middleware and HTTP error handling."""
