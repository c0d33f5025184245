"""How often they may call: the per-request gate in Redis and the rate-limit dependencies."""
