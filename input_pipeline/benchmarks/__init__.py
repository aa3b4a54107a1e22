"""Held-out evaluation data: the benchmarks' readers (`readers.py`) and the registries of what
the evaluators read by name (`registry.py`)."""
