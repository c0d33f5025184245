"""Fuzzing: schemathesis over the OpenAPI schema, raw-body junk, and hypothesis properties."""
