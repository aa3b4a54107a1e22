"""The paper's CLIP baseline: the pretrain recipe with the (image, text) pair alone."""

import ml_collections

from configs import pretrain


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return pretrain.get_config(",".join(filter(None, ("clip", arg))))
