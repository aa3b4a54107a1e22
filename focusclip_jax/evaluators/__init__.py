"""Evaluators: objects with `run(params) -> {name: value}`, built from `config.evals`."""
