"""How often they may call: rate-limit policies and the per-request gate in Redis."""
