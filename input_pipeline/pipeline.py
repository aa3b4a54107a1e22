"""grain: indices → shuffle → repeat → shard → batch → read, map, tokenize → global arrays.

Records are dicts of numpy arrays plus a `description` string; batches hold uint8 images, keypoints,
visibility, person masks and tokens. Heatmaps are *not* rendered here: the training step renders
them on the device from the keypoints (input_pipeline.heatmaps holds both renderers); with
`config.data.crop_on` at "device" it takes the crop there too (input_pipeline.device_crop).
"""

import ctypes
import dataclasses
import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from input_pipeline import sources, tokenizers
from input_pipeline.errors import RequiredFile, check_number, config_errors, require_files
from input_pipeline.tokenizers import Tokenizer

TRAIN_FIELDS = ("image", "keypoints", "visible", "person_mask")


def check_tokenizer_files(
    config: ml_collections.ConfigDict, workdir: str | None = None, *, fit: bool = False
) -> list[RequiredFile]:
    """The tokenizer's files (`fit`: a training run, which may fit its own), as `RequiredFile`s
    for `require_files`; an unknown kind is a `ConfigError` naming the key."""
    with config_errors():
        kind = tokenizers.kind_of(config.tokenizer)
    return kind.required_files(config.tokenizer, workdir, fit=fit)


def check_input_files(
    config: ml_collections.ConfigDict,
    also: Sequence[RequiredFile] = (),
    *,
    workdir: str | None = None,
) -> None:
    """Fail before any work of a training run, naming every missing data, tokenizer (and
    `also`) file at once; then the source's own options (its record map's too) and the
    pipeline's, each a `ConfigError` naming its key."""
    with config_errors():
        source = sources.get(config.data.name)
        files = source.required_files(config.data)
        files += check_tokenizer_files(config, workdir, fit=True)
    require_files([*files, *also])
    with config_errors():
        source.check_options(config.data)
        source.record_map(config.data)
        check_number("config data.worker_count", config.data.worker_count, integer=True, at_least=0)


def tokenizer_corpus(config: ml_collections.ConfigDict) -> list[str]:
    """The texts a tokenizer is fitted on: the training source's (`sources.py`)."""
    return sources.get(config.data.name).corpus(config.data)


def create_tokenizer(
    config: ml_collections.ConfigDict, workdir: str | None = None, *, fit: bool = True
) -> Tokenizer:
    """The tokenizer `config.tokenizer.kind` names (`tokenizers.TOKENIZERS`); a fitted one is
    fitted on `tokenizer_corpus` in memory (training keeps it: `tokenizers.TokenizerKind.save`);
    `fit=False`, for inference, only reads one."""
    kind = tokenizers.kind_of(config.tokenizer)
    return kind.create(
        config.tokenizer, corpus=lambda: tokenizer_corpus(config), workdir=workdir, fit=fit
    )


# glibc's mallopt parameters (malloc.h) and the values set: allocations below 32 MiB (its maximum)
# come from the heap, and up to 512 MiB freed at its top stays there.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_FREED = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 512 << 20))


# Set in grain's worker processes (`_start_worker`): canvases are made in shared memory there.
_canvases_in_shared_memory = False
_MADV_POPULATE_WRITE = 23  # Linux 5.14+: fault a mapping's pages in with one call


def keep_freed_memory() -> bool:
    """Has this process's allocator (glibc) keep the memory a batch frees for the next one;
    False where there is no glibc (the pipeline runs as it is).

    By default glibc maps each allocation over 128 KiB afresh (a 224² image is 147 KiB, a batch
    4.6 MiB) and returns it when freed, so every batch page-faults its memory in again, at about
    6 µs a fault on a 2-core VM (`bench.input_pipeline` counts them per image). Set by
    `train_iterator` in the training process and in each of grain's workers as it starts."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(param, value) == 1 for param, value in _KEEP_FREED)
    except (OSError, AttributeError):
        return False


@dataclasses.dataclass(frozen=True)
class AssembleBatch(grain.transforms.RandomMap):
    """Record indices → one batch: reads the records, applies the source's record map to each
    (one random generator per batch, drawn in turn), stacks the training fields and tokenizes
    the descriptions to fixed length in one tokenizer call. With `canvas_side` (the device
    crops: `device_crop`), each stored image goes top-left on a zeroed canvas of that side, its
    extent beside it.

    Whole batches rather than records flow through grain: its per-element bookkeeping (a random
    generator each, statistics) cost about as much as decoding the `squash` crop's JPEG
    (`bench.input_pipeline --stages`). ArrayRecord's batched read is not used: its thread pools
    took 2-3x the CPU of one read at a time."""

    source: Any
    record_map: grain.transforms.RandomMap | None
    tokenizer: Tokenizer
    max_len: int
    canvas_side: int = 0

    def random_map(self, indices: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        found = [self.source[index] for index in indices.tolist()]
        if self.record_map is not None:
            found = [self.record_map.random_map(entry, rng) for entry in found]
        tokens, mask = self.tokenizer([r["description"] for r in found], self.max_len)
        return stack_records(found, self.canvas_side) | {"tokens": tokens, "mask": mask}


def stack_records(
    found: Sequence[Mapping[str, Any]], canvas_side: int = 0
) -> dict[str, np.ndarray]:
    """The records' training fields as batch arrays; with `canvas_side`, their stored images
    top-left on zeroed canvases of that side (only the margins are zeroed) and the crop fields
    (`device_crop.CROP_FIELDS`)."""
    if not canvas_side:
        return {k: np.stack([r[k] for r in found]) for k in TRAIN_FIELDS}
    fields = {k: np.stack([r[k] for r in found]) for k in (*TRAIN_FIELDS[1:], "crop_box")}
    shape = (len(found), canvas_side, canvas_side, 3)
    canvas = _shared_canvases(shape) if _canvases_in_shared_memory else np.empty(shape, np.uint8)
    extent = np.empty((len(found), 2), np.int32)
    for i, record in enumerate(found):
        height, width = record["image"].shape[:2]
        canvas[i, :height, :width] = record["image"]
        if not _canvases_in_shared_memory:  # new shared memory is zeroed
            canvas[i, :height, width:] = 0
            canvas[i, height:] = 0
        extent[i] = (width, height)
    flip = np.array([r["crop_flip"] for r in found], bool)
    return fields | {"image": canvas, "crop_extent": extent, "crop_flip": flip}


def _shared_canvases(shape: tuple[int, ...]) -> np.ndarray:
    """Zeroed uint8 canvases in shared memory, which grain's worker hands to the training process
    as they are, where an array in its own memory is copied into new shared memory: one copy of
    the batch fewer. Their pages are faulted in by one madvise call (where the kernel has it)
    rather than one fault at a time (~190 an image at 512² on a 2-core VM, `bench.input_pipeline`
    counts them)."""
    canvas = grain.multiprocessing.SharedMemoryArray(shape, np.uint8)
    if madvise := _madvise():
        madvise(canvas.ctypes.data, canvas.nbytes, _MADV_POPULATE_WRITE)  # -1: older kernels
    return canvas


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """The C library's madvise on Linux (whose advice numbers `_MADV_POPULATE_WRITE` is one of);
    None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return madvise


def train_iterator(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of this process's share of each global batch."""
    keep_freed_memory()
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if config.train.batch_size % process_count:
        raise ValueError(
            f"config train.batch_size={config.train.batch_size} must divide over "
            f"{process_count} processes"
        )
    source = sources.get(config.data.name)
    stored = source.train_source(config.data)
    assemble = AssembleBatch(
        stored,
        source.record_map(config.data),
        tokenizer,
        config.model.text.max_len,
        sources.canvas_side(config.data),
    )
    # Indices are shuffled, repeated and sharded; each batch of them is read and assembled at once.
    dataset = (
        grain.MapDataset.range(len(stored))
        .shuffle(seed=config.seed)
        .repeat()[process_index::process_count]
        .batch(config.train.batch_size // process_count, drop_remainder=True)
        .random_map(assemble, seed=config.seed)
    )
    # With worker processes, each computes its batches in turn: grain's default 16 prefetch threads
    # per worker ran ahead of the consumer and contended for the GIL, about 2x the CPU per image
    # (bench.input_pipeline). Without, two threads assemble the next batches while the step runs
    # (grain's default buffer, 500 elements, would hold 500 batches).
    sequential = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    threads = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
    dataset = dataset.to_iter_dataset(sequential if config.data.worker_count > 0 else threads)
    if config.data.worker_count > 0:
        options = grain.MultiprocessingOptions(num_workers=config.data.worker_count)
        dataset = dataset.mp_prefetch(options, worker_init_fn=_start_worker)
    return iter(dataset)


def _start_worker(worker_index: int, worker_count: int) -> None:
    """What each of grain's worker processes sets as it starts."""
    global _canvases_in_shared_memory
    keep_freed_memory()
    _canvases_in_shared_memory = True


def batch_spec(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one global training batch (what `train_iterator` yields, all
    processes together): for compiling the step before any data exists. A batch the device
    crops holds canvases and `device_crop.CROP_FIELDS`."""
    batch, size = config.train.batch_size, config.data.image_size
    people, max_len = config.data.max_people, config.model.text.max_len
    joints = sources.skeleton_of(config.data.name).num_joints
    spec = lambda shape, dtype: jax.ShapeDtypeStruct((batch, *shape), np.dtype(dtype))
    fields = {
        "image": spec((size, size, 3), np.uint8),
        "keypoints": spec((people, joints, 2), np.float32),
        "visible": spec((people, joints), bool),
        "person_mask": spec((people,), bool),
        "tokens": spec((max_len,), np.int32),
        "mask": spec((max_len,), bool),
    }
    side = sources.canvas_side(config.data)
    if not side:
        return fields
    return fields | {
        "image": spec((side, side, 3), np.uint8),
        "crop_box": spec((4,), np.float32),
        "crop_extent": spec((2,), np.int32),
        "crop_flip": spec((), bool),
    }


def to_global_arrays(
    batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding
) -> dict[str, jax.Array]:
    """This process's rows → global `jax.Array`s split over the mesh's data axes."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
