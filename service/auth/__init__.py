"""Who may call: password hashing, tokens, users and token revocation."""
