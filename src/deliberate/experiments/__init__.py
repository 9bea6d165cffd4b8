"""Experiments built from the library: the quickstart pipeline and the suspects comparison."""
