"""Training input throughput from prepared records at 224 px, against the original code's way.

    python -m bench.input_pipeline [--workers=0,1,2] [--batches=100] [--crops=squash,person] \\
        [--vocab=data/bert-base-uncased/vocab.txt] [--compare_to=main] [--rounds=3] [--stages] \\
        [--copy_format=raw] [--person_side=224] [--image_format=raw]

Ours: grain over ArrayRecord shards (input_pipeline.prepare.mpii's defaults) → decode → crop and
resize to 224 → pick a description → tokenize (512) → batch of 32 uint8 images; heatmaps are
rendered on the device, so none here. The original's way (anon12620/FocusCLIP): PIL load of the
full-size JPEG + the precomputed full-size heatmap PNG, both resized to 224, same tokenizer. Records
are the real MPII sample (../shared/data/mpii_sample, 1280×720 frames) repeated, or generated frames
of the same size when it is absent, cycled to MPII's 14,644 training records. The tokenizer is
BERT's WordPiece (the default) when `--vocab` exists, else a word-level one (cheaper: the numbers
are then not the default pipeline's).

Prints wall img/s and img per CPU-second of all the processes doing the work (a measuring process
and its grain workers, from /proc): on a shared machine the per-CPU-second rate is the per-core
figure. `--compare_to` (a git ref of this repository, or a folder holding another checkout) measures
that code too, on the same records, each setting of both in turn, in fresh processes (`--rounds`
times, medians): the two columns of a row come from the same minutes of a shared machine.
`--stages` then times each stage of this tree's pipeline alone (read, parse, crop, tokenize,
batch) and prints them beside the pipeline's CPU per image: the difference is grain's share.
`--copy_format=raw` (stored copies as raw pixels), `--person_side=224` (a stored person copy) and
`--image_format=raw` (the stored image as raw pixels) prepare this tree's records with
`input_pipeline.prepare`'s flags of those names; a `--compare_to`
tree then reads records prepared with the defaults (JPEG copies, no person copy).
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags
from PIL import Image

from configs import pretrain
from input_pipeline import cli, heatmaps, pipeline, records, sources, transforms
from input_pipeline.prepare import mpii, shards
from input_pipeline.tokenizers import BertWordPieceTokenizer, Tokenizer, WordTokenizer

FLAGS = flags.FLAGS
flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to measure.")
flags.DEFINE_integer("batches", 100, "Timed batches of 32 per setting.")
flags.DEFINE_integer(
    "warmup", 20, "Batches before timing: grain's threads first fill a prefetch buffer at once."
)
flags.DEFINE_integer("copies", 40, "Times each source image is repeated in the prepared records.")
flags.DEFINE_integer(
    "records",
    mpii.EXPECTED_IMAGES["train"],
    "Prepared records streamed (the prepared ones cycled).",
)
flags.DEFINE_list(
    "crops", ["squash"], "data.crop modes to measure (squash, person, random_resized)."
)
flags.DEFINE_string(
    "vocab",
    pretrain.get_config().tokenizer.vocab,
    "BERT vocab.txt; a word-level tokenizer if absent.",
)
flags.DEFINE_string(
    "compare_to",
    "",
    "A git ref of this repository (e.g. main) or a folder with another checkout: its pipeline is "
    "measured beside this one's, setting by setting.",
)
flags.DEFINE_integer("rounds", 1, "Measurements of each setting (medians are printed).")
flags.DEFINE_bool(
    "stages",
    False,
    "Also time each stage of this tree's pipeline alone (read, parse, crop, tokenize, batch), "
    "in CPU µs per image beside the pipeline's: the rest is grain's.",
)
flags.DEFINE_enum(
    "copy_format",
    "jpeg",
    # records.COPY_FORMATS spelled out: this file also runs over a --compare_to tree's modules,
    # which need not define it.
    ("jpeg", "raw"),
    "How this tree's records store their copies (--compare_to's: jpeg).",
)
flags.DEFINE_enum(
    "image_format",
    "jpeg",
    ("jpeg", "raw"),
    "How this tree's records store the image itself (--compare_to's: jpeg).",
)
flags.DEFINE_integer(
    "person_side", 0, "Side of the person copy this tree's records store (--compare_to's: none)."
)
flags.DEFINE_string(
    "measure", "", "Internal: measure one setting (JSON) with the code imported, print JSON."
)

cli.check_flags(
    workers=cli.Number(integer=True, at_least=0),
    batches=cli.Number(integer=True, at_least=1),
    warmup=cli.Number(integer=True, at_least=0),
    copies=cli.Number(integer=True, at_least=1),
    records=cli.Number(integer=True, at_least=1),
    crops=cli.Choices(transforms.CROP_MODES),
    rounds=cli.Number(integer=True, at_least=1),
    person_side=cli.Number(integer=True, at_least=0),
)

REPO = Path(__file__).resolve().parents[1]
# Runs this file with `tree` first on sys.path: the pipeline measured is that tree's.
_IN_TREE = (
    "import runpy, sys; tree = sys.argv[1]; sys.path.insert(0, tree); "
    "sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)

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


def _replicate(prepared: Path, count: int, per_shard: int = 512) -> None:
    """Rewrites the prepared train split as `count` entries, its own cycled: grain's shuffle costs
    more per element on few records (0.28 ms at 200, 0.02 ms at MPII's 14,644, measured here)."""
    source, _ = records.open_split(str(prepared), "train")
    entries = [source[i] for i in range(len(source))]
    cycled = [entries[i % len(entries)] for i in range(count)]
    shards.write_split(prepared, "train", cycled, name=mpii.NAME, records_per_shard=per_shard)


def _counters() -> np.ndarray:
    """CPU seconds and minor page faults of this process and of its live descendants (grain's
    workers), from Linux /proc: [cpu main, cpu workers, faults main, faults workers]."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # the process ended meanwhile
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    ticks, faults, todo = 0, 0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        faults += int(fields[7])  # minflt
    own = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    return np.array([time.process_time(), ticks / os.sysconf("SC_CLK_TCK"), own, faults])


def _tokenizer(vocab: str) -> Tokenizer:
    if Path(vocab).is_file():
        return BertWordPieceTokenizer(vocab)
    return WordTokenizer.fit([DESCRIPTION])


def _ours(prepared: str, vocab: str, workers: int, batches: int, crop: str) -> dict[str, Any]:
    """img/s wall, img per CPU-second of this process and its workers, CPU ms per image of this
    process and of the workers, their minor page faults per image, and the file the pipeline
    came from."""
    config = _config(prepared, workers, crop)
    it = pipeline.train_iterator(config, _tokenizer(vocab), process_index=0, process_count=1)
    for _ in range(FLAGS.warmup):
        next(it)
    start, before = time.perf_counter(), _counters()
    for _ in range(batches):
        next(it)
    images = batches * config.train.batch_size
    cpu_main, cpu_workers, faults_main, faults_workers = _counters() - before
    rate = images / (time.perf_counter() - start)
    it.close()
    return {
        "img_per_s": rate,
        "img_per_cpu_s": images / (cpu_main + cpu_workers),
        "cpu_ms_main": cpu_main / images * 1e3,
        "cpu_ms_workers": cpu_workers / images * 1e3,
        "faults_per_image": (faults_main + faults_workers) / images,
        "code": pipeline.__file__,
    }


def _config(prepared: str, workers: int, crop: str) -> Any:
    config = pretrain.get_config()
    config.data.prepared = prepared
    config.data.description_sources = (mpii.DEFAULT_SOURCE,)  # one descriptions.json
    config.data.worker_count = workers
    config.data.crop = crop
    return config


def _stage_costs(prepared: str, vocab: str, crop: str, images: int = 1024) -> dict[str, float]:
    """CPU µs per image of each stage of the pipeline run alone in this process, on records in
    shuffled order as grain reads them: the pipeline's own figure minus their sum is what grain
    adds (its per-record bookkeeping and, with workers, the batches' trip through shared memory).
    """
    config = _config(prepared, 0, crop)
    split, _ = records.open_split(prepared, "train")
    transform = sources.get(config.data.name).record_map(config.data)
    tokenizer, max_len = _tokenizer(vocab), config.model.text.max_len
    batch = config.train.batch_size
    order = np.random.default_rng(0).permutation(len(split))[:images]
    rng = np.random.default_rng(0)

    def timed(fn, items: Any) -> tuple[list[Any], float]:
        start = time.process_time()
        done = [fn(item) for item in items]
        return done, (time.process_time() - start) / images * 1e6

    entries, read = timed(lambda i: split[int(i)], order)
    parsed, parse = timed(records.decode_prepared, entries)
    examples, cropped = timed(lambda p: transform.apply(p.header, p.image, rng, *p[2:]), parsed)
    batches = [examples[i : i + batch] for i in range(0, images - batch + 1, batch)]
    _, tokenize = timed(lambda b: tokenizer([e["description"] for e in b], max_len), batches)
    canvas = sources.canvas_side(config.data)
    # Each batch is dropped once stacked, as the pipeline's are: kept, every canvas would be
    # fresh memory and its page faults counted here.
    _, stacked = timed(lambda b: len(pipeline.stack_records(b, canvas)), batches)
    costs = {"read": read, "parse": parse, "crop": cropped, "tokenize": tokenize, "batch": stacked}
    return costs | {"sum": sum(costs.values())}


def _measure_in(tree: Path, setting: dict[str, Any]) -> dict[str, Any]:
    """`_ours` for `setting` in a fresh process importing `tree`'s code."""
    command = [sys.executable, "-c", _IN_TREE, str(tree), __file__]
    command += [f"--measure={json.dumps(setting)}", f"--warmup={FLAGS.warmup}"]
    path = os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])
    env = os.environ | {"PYTHONPATH": path}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"measuring {tree} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["code"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"{tree}: measured {result['code']}, not this tree's pipeline")
    return result


def _checkout(ref: str, root: Path) -> Path:
    """`ref`'s files: a folder as it is, or a git ref of this repository exported under `root`."""
    if Path(ref).is_dir():
        return Path(ref)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if commit.returncode:
        raise app.UsageError(f"--compare_to={ref}: neither a folder nor a git ref of {REPO}")
    tree = root / "compare_to"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit.stdout.strip()], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _original(
    annotated: list[records.ImageRecord], images: Path, tokenizer: Tokenizer, count: int
) -> tuple[float, float]:
    """PIL load of the full JPEG + its precomputed heatmap PNG, both resized; tokenize."""
    masks = {}
    for record in annotated[: len({r.image.split("_", 1)[1] for r in annotated})]:
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
        record = annotated[k % len(annotated)]
        image = Image.open(images / record.image).convert("RGB").resize((224, 224))
        heat = Image.open(masks[record.image.split("_", 1)[1]]).resize((224, 224))
        np.asarray(image), np.asarray(heat, np.float32) / 255
        tokenizer([DESCRIPTION], 512)
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


def _row(result: dict[str, Any], original_cpu: float) -> str:
    return (
        f"{result['img_per_s']:6.0f} img/s, {result['img_per_cpu_s']:6.0f} img/CPU-s "
        f"({result['img_per_cpu_s'] / original_cpu:4.1f}x the original's way), CPU ms/img: "
        f"main {result['cpu_ms_main']:.2f}, workers {result['cpu_ms_workers']:.2f}; "
        f"{result['faults_per_image']:.1f} page faults per image"
    )


def _median(results: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("img_per_s", "img_per_cpu_s", "cpu_ms_main", "cpu_ms_workers", "faults_per_image")
    return {k: float(np.median([r[k] for r in results])) for k in keys}


def _table(results: dict[tuple[str, int, str], list[dict[str, Any]]], this: str, other: str) -> str:
    """Markdown: per crop and worker count, both trees' medians side by side."""
    lines = [
        f"| crop | workers | img per CPU-second: {other} | {this} | x | img/s wall: {other} | "
        f"{this} |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for crop in FLAGS.crops:
        for workers in map(int, FLAGS.workers):
            a, b = (_median(results[crop, workers, name]) for name in (other, this))
            lines.append(
                f"| {crop} | {workers} | {a['img_per_cpu_s']:,.0f} | {b['img_per_cpu_s']:,.0f} | "
                f"{b['img_per_cpu_s'] / a['img_per_cpu_s']:.2f} | {a['img_per_s']:,.0f} | "
                f"{b['img_per_s']:,.0f} |"
            )
    return "\n".join(lines)


def _print_stages(prepared: str, results: dict[tuple[str, int, str], list[dict[str, Any]]]):
    """Each crop's stages alone beside this tree's pipeline, CPU µs per image."""
    print("\nthis tree's stages alone, CPU µs per image (`crop`: decode, crop, resize, flip):")
    for crop in FLAGS.crops:
        costs = _stage_costs(prepared, FLAGS.vocab, crop)
        pipelines = ", ".join(
            f"{workers} workers "
            f"{1e6 / _median(results[crop, workers, 'this'])['img_per_cpu_s']:.0f}"
            for workers in map(int, FLAGS.workers)
        )
        stages = ", ".join(f"{name} {us:.0f}" for name, us in costs.items())
        print(f"crop={crop}: {stages}; the pipeline: {pipelines}")


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.measure:
        setting = json.loads(FLAGS.measure)
        print(json.dumps(_ours(**setting)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        trees = {"this": REPO}
        if FLAGS.compare_to:
            trees[FLAGS.compare_to] = _checkout(FLAGS.compare_to, root)
        annotations, descriptions = _raw_data(root, FLAGS.copies)
        options = {
            name: FLAGS[name].value for name in ("copy_format", "person_side", "image_format")
        }
        options = {k: v for k, v in options.items() if v != flags.FLAGS[k].default}
        this, default = root / "prepared", root / ("prepared-default" if options else "prepared")
        prepared_as = {name: this if name == "this" else default for name in trees}
        for prepared in sorted(set(prepared_as.values())):
            start = time.perf_counter()
            chosen = options if prepared == prepared_as["this"] else {}
            meta = mpii.prepare(
                str(root / "images"), [str(annotations)], str(descriptions), str(prepared),
                **chosen,
            )  # fmt: skip
            images = meta["splits"]["train"]["images"]
            print(
                f"prepare ({chosen or 'defaults'}): {images} images in "
                f"{time.perf_counter() - start:.1f} s"
            )
            _replicate(prepared, FLAGS.records)
        tokenizer = _tokenizer(FLAGS.vocab)
        if isinstance(tokenizer, BertWordPieceTokenizer):
            print(f"tokenizer: BERT WordPiece ({FLAGS.vocab})")
        else:
            print(f"tokenizer: word-level ({FLAGS.vocab} not found: not the default pipeline)")
        annotated = mpii.read_mmpose_json(annotations)
        original, original_cpu = _original(annotated, root / "images", tokenizer, 100)
        print(f"original way, 1 process: {original:.0f} img/s, {original_cpu:.0f} img/CPU-s")
        results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
        for round_index in range(FLAGS.rounds):
            for crop in FLAGS.crops:
                for workers in map(int, FLAGS.workers):
                    # Alternate which tree goes first: a machine's load drifts within a minute.
                    names = list(trees)[:: 1 if round_index % 2 == 0 else -1]
                    for name in names:
                        setting = {
                            "prepared": str(prepared_as[name]),
                            "vocab": FLAGS.vocab,
                            "workers": workers,
                            "batches": FLAGS.batches,
                            "crop": crop,
                        }
                        result = _measure_in(trees[name], setting)
                        results.setdefault((crop, workers, name), []).append(result)
                        print(
                            f"round {round_index + 1}, {name}, crop={crop}, {workers} workers: "
                            f"{_row(result, original_cpu)}",
                            flush=True,
                        )
        print(f"\nmedians of {FLAGS.rounds} round(s):")
        for (crop, workers, name), runs in results.items():
            print(
                f"{name:>10s}, crop={crop}, {workers} workers: {_row(_median(runs), original_cpu)}"
            )
        if len(trees) == 2:
            print(_table(results, *trees))
        if FLAGS.stages:
            _print_stages(str(prepared_as["this"]), results)


if __name__ == "__main__":
    cli.run(main)
