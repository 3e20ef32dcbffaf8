"""The offline benchmark: the base classifier, the side-by-side experiment, the report and the `evaluate` module."""
