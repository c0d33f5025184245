"""The rules every layer shares, and nothing else: what a username, password and scope must
be, the rate syntax, and the rate-limit policies. Pure modules: no I/O, no framework, so
settings, schemas, stores and the CLI can all state a rule by importing it."""
