"""Writes the CLIP BPE fixtures of tests/test_tokenizers.py with open_clip's SimpleTokenizer.

A small vocabulary (the header and the first `--merges` merges of the `bpe_simple_vocab_16e6.txt.gz`
inside open_clip's package, gzip'd) and the reference ids of real sentences tokenized with it;
also the ids of a few sentences with the full vocabulary, for a test that runs when the full file
is found. CI has no torch: the tests only read these files.

How it was run (2026-11, CPU, Python 3.11 because PyPI's torch for 3.12 is a CUDA build):

    /root/.pyenv/versions/3.11.7/bin/python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 open_clip_torch
    /tmp/refvenv/bin/python bench/make_tokenizer_goldens.py

open_clip's tokenizer module is loaded from its file: importing the package also imports its
model code, which needs a torchvision whose C ops match the installed torch.
"""

import argparse
import gzip
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from types import ModuleType

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tokenizers"
SMALL_VOCAB = "bpe_clip_2000.txt.gz"
CONTEXT_LENGTH = 77
LONG_TEXT = (
    "There are 2 people in the image who are playing tennis. The person on the left is standing "
    "with the legs apart, the left knee slightly bent and the right leg straight; the right arm "
    "is raised above the head holding a racket while the left arm is stretched out for balance. "
    "The torso leans forward a little and the head is tilted up, looking at the ball. The person "
    "on the right is crouching, both knees bent, arms held in front of the chest."
)
SENTENCES = [
    "A person is sitting.",
    "There are 2 people in the image who are skiing.",
    "The person's left arm is raised above the head; the right arm hangs down.",
    "Legs: bent at the knees (about 90 degrees), feet flat on the floor.",
    "They're walking, aren't they? I'll say it's 3:45 pm & they've run 10.5 km!",
    "Naïve café owner in Zürich, São Paulo and Kraków.",
    "“Quoted” and ‘single-quoted’ text — with an em dash…",
    "Tom&#39;s arm &amp; leg are &lt;bent&gt;.",
    "  Multiple   spaces,\ttabs and\nnew lines  ",
    "UPPERCASE AND MixedCase Words",
    "pneumonoultramicroscopicsilicovolcanoconiosis and antidisestablishmentarianism",
    "日本語のテキスト and emoji 😀👍",
    "e-mail: someone@example.com, URL https://example.org/path?x=1",
    "1st 2nd 3rd 4th 2024-01-31 3.14159",
    "",
    LONG_TEXT,
]
FULL_SENTENCES = [SENTENCES[2], SENTENCES[4], SENTENCES[5], SENTENCES[11], LONG_TEXT]


def open_clip_tokenizer_module() -> ModuleType:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("open_clip_torch is not installed (pip install open_clip_torch)")
    path = Path(spec.submodule_search_locations[0]) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("open_clip_tokenizer", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def ids(tokenizer: object, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, context_length=CONTEXT_LENGTH).tolist()  # type: ignore[operator]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merges", type=int, default=2000, help="merges of the small vocabulary")
    args = parser.parse_args()
    module = open_clip_tokenizer_module()
    full = Path(module.default_bpe())
    lines = gzip.decompress(full.read_bytes()).decode("utf-8").split("\n")
    OUT.mkdir(parents=True, exist_ok=True)
    small = OUT / SMALL_VOCAB
    # No trailing newline: SimpleTokenizer would read the empty last line as a merge.
    text = "\n".join(lines[: args.merges + 1]).encode("utf-8")
    small.write_bytes(gzip.compress(text, mtime=0))
    small_tokenizer = module.SimpleTokenizer(bpe_path=str(small))
    goldens = {
        "generator": "bench/make_tokenizer_goldens.py",
        "open_clip_version": importlib.metadata.version("open_clip_torch"),
        "context_length": CONTEXT_LENGTH,
        "small": {
            "vocab": SMALL_VOCAB,
            "vocab_size": small_tokenizer.vocab_size,
            "texts": SENTENCES,
            "ids": ids(small_tokenizer, SENTENCES),
        },
        "full": {
            "vocab_size": module.SimpleTokenizer().vocab_size,
            "texts": FULL_SENTENCES,
            "ids": ids(module.SimpleTokenizer(), FULL_SENTENCES),
        },
    }
    (OUT / "clip_bpe_goldens.json").write_text(json.dumps(goldens, ensure_ascii=False) + "\n")
    print(f"wrote {small} ({small.stat().st_size} bytes) and {OUT / 'clip_bpe_goldens.json'}")


if __name__ == "__main__":
    main()
