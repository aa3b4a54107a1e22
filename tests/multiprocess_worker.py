"""`focusclip_jax.main`, plus a record of the rows this process trained on (tests only).

`python -m tests.multiprocess_worker <rows.json> <main's flags>`: the digest of every local
batch row handed to the device goes to rows.json, so a test can check how processes split data.
"""

import hashlib
import json
import sys
from collections.abc import Mapping

import numpy as np
from absl import app

from focusclip_jax import main, train


def _record_rows(path: str) -> None:
    to_global_arrays = train.pipeline.to_global_arrays
    digests: list[str] = []

    def recording(batch: Mapping[str, np.ndarray], sharding):
        digests.extend(hashlib.sha1(row.tobytes()).hexdigest() for row in batch["image"])
        with open(path, "w") as f:
            json.dump(digests, f)
        return to_global_arrays(batch, sharding)

    train.pipeline.to_global_arrays = recording


if __name__ == "__main__":
    _record_rows(sys.argv.pop(1))
    app.run(main.main)
