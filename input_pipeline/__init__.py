"""Everything between files on disk and a sharded global batch; knows nothing of models."""
