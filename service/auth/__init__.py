"""Who may call: account rules, password hashing, tokens, users and token revocation."""
