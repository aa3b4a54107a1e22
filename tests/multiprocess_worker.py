"""`focusclip_jax.main`, plus a record of the rows this process trained on (tests only).

`python -m tests.multiprocess_worker <rows.json> <main's flags>`: the digest of every local
batch row handed to the device goes to rows.json, so a test can check how processes split data.
"""

import hashlib
import json
import sys
from collections.abc import Callable, Mapping

import numpy as np
from absl import app

from focusclip_jax import main, train


def recording(path: str, to_global_arrays: Callable) -> Callable:
    """`to_global_arrays` that first appends the digests of the batch's image rows to `path`."""
    digests: list[str] = []

    def record(batch: Mapping[str, np.ndarray], sharding):
        digests.extend(hashlib.sha1(row.tobytes()).hexdigest() for row in batch["image"])
        with open(path, "w") as f:
            json.dump(digests, f)
        return to_global_arrays(batch, sharding)

    return record


if __name__ == "__main__":
    train.pipeline.to_global_arrays = recording(sys.argv.pop(1), train.pipeline.to_global_arrays)
    app.run(main.main)
