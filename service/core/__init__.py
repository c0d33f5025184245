"""Cross-cutting pieces: configuration, security, Redis, rate limiting, errors."""
