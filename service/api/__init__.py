"""HTTP layer: routers, dependencies and schemas."""
