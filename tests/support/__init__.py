"""Helpers shared by the test packages: real processes on free ports."""
