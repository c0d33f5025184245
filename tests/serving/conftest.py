"""Real-process tests share the gunicorn fixtures of tests/conftest.py."""
