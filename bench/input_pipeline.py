"""Training input throughput from prepared records at 224 px, against the original code's way.

    python -m bench.input_pipeline [--workers=1,2] [--batches=30]

Ours: grain over ArrayRecord shards (JPEGs stored at 512 px max side) → decode (JPEG draft mode) →
squash resize to 224 → pick a description → tokenize (512) → batch of 32; heatmaps are rendered on
the device, so none here. The original's way (anon12620/FocusCLIP): PIL load of the full-size JPEG
+ the precomputed full-size heatmap PNG, both resized to 224, same tokenizer. Records are the real
MPII sample (../shared/data/mpii_sample, 1280×720 frames) repeated, or generated frames of the
same size when it is absent. Prints img/s and img/s per core (busy processes: the workers, or the
main process with 0 workers).
"""

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from PIL import Image

from configs import pretrain
from input_pipeline import heatmaps, mpii, pipeline, prepare_mpii
from input_pipeline.tokenizers import WordTokenizer

FLAGS = flags.FLAGS
flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to measure.")
flags.DEFINE_integer("batches", 30, "Timed batches of 32 per setting (after 3 warm-up batches).")
flags.DEFINE_integer("copies", 40, "Times each source image is repeated in the prepared records.")

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mpii_sample"
DESCRIPTION = (
    "There is one person in the image who is repairing a truck. The person is standing with "
    "both legs straight and slightly apart, the right leg bearing most of the weight. The left "
    "arm hangs down beside the torso with the elbow slightly bent, while the right arm is raised "
    "and extended forward, the hand resting on the engine. The torso is upright and turned "
    "slightly to the left. The head is tilted towards the right shoulder, facing the camera."
)


def _raw_data(root: Path, copies: int) -> tuple[Path, Path]:
    """Images + mmpose JSON (+ descriptions) in `root`; returns (annotations, descriptions)."""
    images = root / "images"
    images.mkdir()
    if SAMPLE.is_dir():
        people = json.loads((SAMPLE / "test_mpii.json").read_text())
        sources = [(SAMPLE / p["image"], p) for p in people]
    else:
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 255, (720, 1280, 3), np.uint8)
        Image.fromarray(frame).save(root / "frame.jpg", quality=90)
        joints = np.stack([rng.uniform(500, 800, 16), rng.uniform(100, 700, 16)], 1)
        row = {"joints": joints.tolist(), "joints_vis": [1] * 16, "center": [640, 360]}
        sources = [(root / "frame.jpg", row | {"image": "frame.jpg"})]
    rows, items = [], []
    for k in range(copies):
        for path, row in sources:
            name = f"{k:03d}_{path.name}"
            (images / name).symlink_to(path)
            rows.append(row | {"image": name})
            items.append({"image": name, "description": DESCRIPTION})
    (root / "mpii_train.json").write_text(json.dumps(rows))
    (root / "descriptions.json").write_text(json.dumps(items))
    return root / "mpii_train.json", root / "descriptions.json"


def _ours(
    prepared: Path, tokenizer: WordTokenizer, workers: int, batches: int
) -> tuple[float, float]:
    """(img/s, img per CPU-second of this process: the per-core rate with 0 workers)."""
    config = pretrain.get_config()
    config.data.prepared = str(prepared)
    config.data.worker_count = workers
    it = pipeline.train_iterator(config, tokenizer, process_index=0, process_count=1)
    for _ in range(3):
        next(it)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    images = batches * config.train.batch_size
    rate = images / (time.perf_counter() - start)
    cpu_rate = images / (time.process_time() - cpu)
    it.close()
    return rate, cpu_rate


def _original(
    records: list[mpii.MpiiRecord], images: Path, tokenizer: WordTokenizer, count: int
) -> tuple[float, float]:
    """PIL load of the full JPEG + its precomputed heatmap PNG, both resized; tokenize."""
    masks = {}
    for record in records[: len({r.image.split("_", 1)[1] for r in records})]:
        image = Image.open(images / record.image)
        kp = np.stack([p.keypoints for p in record.people])
        vis = np.stack([p.visible for p in record.people])
        heat = heatmaps.render_heatmap_np(
            kp, vis, np.ones(len(kp), bool), image.height, image.width
        )
        path = images.parent / f"{record.image.split('_', 1)[1]}.png"
        Image.fromarray((heat * 255).astype(np.uint8)).save(path)
        masks[record.image.split("_", 1)[1]] = path
    start, cpu = time.perf_counter(), time.process_time()
    for k in range(count):
        record = records[k % len(records)]
        image = Image.open(images / record.image).convert("RGB").resize((224, 224))
        heat = Image.open(masks[record.image.split("_", 1)[1]]).resize((224, 224))
        np.asarray(image), np.asarray(heat, np.float32) / 255
        tokenizer([DESCRIPTION], 512)
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


def main(argv: list[str]) -> None:
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        annotations, descriptions = _raw_data(root, FLAGS.copies)
        prepared = root / "prepared"
        start = time.perf_counter()
        meta = prepare_mpii.prepare(
            str(root / "images"), [str(annotations)], str(descriptions), str(prepared)
        )
        images = meta["splits"]["train"]["images"]
        print(f"prepare: {images} images in {time.perf_counter() - start:.1f} s (2 processes)")
        tokenizer = WordTokenizer.fit([DESCRIPTION])
        records = mpii.read_mmpose_json(annotations)
        original, original_cpu = _original(records, root / "images", tokenizer, 100)
        print(f"original way, 1 process: {original:.0f} img/s, {original_cpu:.0f} img/CPU-s")
        for workers in map(int, FLAGS.workers):
            rate, cpu_rate = _ours(prepared, tokenizer, workers, FLAGS.batches)
            if workers == 0:  # all work in this process: CPU time is the per-core cost
                print(
                    f"ours, in-process: {rate:.0f} img/s, {cpu_rate:.0f} img/CPU-s, "
                    f"{cpu_rate / original_cpu:.1f}x the original's way per CPU-second"
                )
            else:
                per_core = rate / workers
                print(
                    f"ours, {workers} workers: {rate:.0f} img/s, {per_core:.0f} img/s per worker, "
                    f"{per_core / original:.1f}x the original's way (wall)"
                )


if __name__ == "__main__":
    app.run(main)
