"""Pose descriptions from an LLM, as the FocusCLIP authors made the published dataset.

    python -m input_pipeline.prepare.describe_with_llm --annotations=<mpii_train.json | .mat> \\
        --out=<descriptions.json> --model=<name> --base_url=<OpenAI-compatible base url> \\
        [--api_key_env=OPENAI_API_KEY] [--concurrency=4] [--requests_per_minute=60] \\
        [--max_retries=6] [--limit=N]

One chat completion per image ("single-shot"), with the authors' system prompt and the image's
people as JSON (their `generate_captions.py`: 1-based integer keypoints, [-1, -1] for invisible
joints, the activity when the annotations have it), temperature 0.5, at most 512 tokens, frequency
penalty 1.0. Any OpenAI-compatible server works (OpenAI, vLLM, llama.cpp, Ollama, ...): POST
{base_url}/chat/completions with `Authorization: Bearer <key>`, the key read from an environment
variable and never logged or written.

The output is the published descriptions JSON (a list of {image, activity, count, people[{id,
center, scale, kpts, kpts_vis}], description}) that `input_pipeline.prepare.mpii` reads.
It is rewritten atomically (temporary file + rename) every few seconds and at the end, so an
interrupted run loses at most those seconds; a rerun skips images already described. Requests run
in a thread pool under a client-side rate limit; 429, 5xx, timeouts and connection errors are
retried with exponential backoff and jitter (at least the server's Retry-After); other errors fail
that image only, which the next run retries.
"""

import argparse
import concurrent.futures
import dataclasses
import email.utils
import http.client
import json
import logging
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from input_pipeline import records, sources
from input_pipeline.errors import InputDataError
from input_pipeline.prepare import mpii

# The system prompt of the authors' `src/captioning/generate_captions.py` (github anon12620/
# FocusCLIP), verbatim; the user message is the image's annotation as JSON (`user_prompt`).
SYSTEM_PROMPT = (
    "You are an expert human activity and pose analyzer with deep understanding of MPII Human "
    "Pose dataset, which has 16 keypoints in order: 0 - right ankle, 1 - right knee, 2 - right "
    "hip, 3 - left hip, 4 - left knee, 5 - left ankle, 6 - pelvis, 7 - thorax, 8 - upper neck, "
    "9 - head top, 10 - right wrist, 11 - right elbow, 12 - right shoulder, 13 - left shoulder, "
    "14 - left elbow, 15 - left wrist. Given a set of 2D keypoint coordinates from MPII dataset as "
    "(x,y) with -1 for invisible joints, you will precisely describe body poses in terms of "
    'relative limb locations. Your descriptions will follow this template: "There are '
    "[num2word($count)] people in image who are [getVerb($activity) parseName($activity)]. "
    '[General attributes describing $activity in keypoints context.]" For each person in image: '
    '"The [parseLocation($center,$scale)] person is [predictStateFromContext()] with their '
    '[limb]..." For each limb (left leg, right leg, left arm, right arm, torso, head): "[Describe '
    "how these limbs are positioned relative to other limbs, bend angles, and other similar pose "
    'information.]" Use concise, precise and gender-neutral language.'
)
TEMPERATURE = 0.5
MAX_TOKENS = 512
FREQUENCY_PENALTY = 1.0  # the authors' OpenAI call
MAX_RETRY_AFTER_S = 3600.0  # a longer Retry-After is taken as this
LOG_BODY_CHARS = 300  # of an error response

log = logging.getLogger(__name__)


def _one_based(value: float) -> float:
    return round(float(value) + 1.0, 3)


def user_prompt(record: records.ImageRecord) -> str:
    """The image's annotation as the authors sent it: JSON of the activity (when known), the
    count and the people (id, center, scale, integer 1-based kpts, [-1, -1] when invisible).

    Their prompt also carried an `istrain` flag (1 for every annotated MPII image): left out.
    """
    sample: dict[str, Any] = {"activity": record.activity} if record.activity else {}
    sample["count"] = len(record.people)
    sample["people"] = [
        {
            "id": i,
            "center": None if p.center is None else [_one_based(c) for c in p.center],
            "scale": p.scale,
            "kpts": [
                [int(_one_based(x)), int(_one_based(y))] if v else [-1, -1]
                for (x, y), v in zip(p.keypoints.tolist(), p.visible.tolist(), strict=True)
            ],
        }
        for i, p in enumerate(record.people)
    ]
    return json.dumps(sample)


def published_item(record: records.ImageRecord, description: str) -> dict[str, Any]:
    """One entry of the published descriptions JSON (1-based coordinates, as MPII stores them)."""
    people = []
    for i, p in enumerate(record.people):
        kpts = [
            [_one_based(x), _one_based(y)] if v else [-1.0, -1.0]
            for (x, y), v in zip(p.keypoints.tolist(), p.visible.tolist(), strict=True)
        ]
        people.append({
            "id": i,
            "center": None if p.center is None else [_one_based(c) for c in p.center],
            "scale": p.scale,
            "kpts": kpts,
            "kpts_vis": [int(v) for v in p.visible.tolist()],
        })  # fmt: skip
    return {
        "image": record.image,
        "activity": record.activity,
        "count": len(record.people),
        "people": people,
        "description": description,
    }


class RateLimiter:
    """Spaces request starts at least 60 / requests_per_minute seconds apart, across threads."""

    def __init__(self, requests_per_minute: float):
        self.interval = 60.0 / requests_per_minute if requests_per_minute > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class RequestFailed(Exception):
    """An image's request failed for good (a non-retryable error, or retries used up)."""


@dataclasses.dataclass
class ChatClient:
    """POSTs chat completions to an OpenAI-compatible server with retries and a rate limit."""

    base_url: str
    api_key: str = dataclasses.field(repr=False)  # never in a repr, a log or a traceback's locals
    model: str
    limiter: RateLimiter
    max_retries: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 120.0
    sleep: Callable[[float], None] = time.sleep

    def _post(self, body: bytes) -> dict[str, Any]:
        request = urllib.request.Request(
            self.base_url.rstrip("/") + "/chat/completions",
            data=body,
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read().decode("utf-8"))

    def _redact(self, text: str) -> str:
        return text.replace(self.api_key, "<api key>") if self.api_key else text

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter (half to all of the step), at least Retry-After."""
        step = min(self.max_backoff_s, self.backoff_s * 2.0**attempt)
        delay = step * (0.5 + 0.5 * random.random())
        return max(delay, retry_after) if retry_after is not None else delay

    def complete(self, system: str, user: str, what: str) -> str:
        """The completion's text; raises RequestFailed. `what` names the request in logs."""
        body = json.dumps({
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "temperature": TEMPERATURE,
            "max_tokens": MAX_TOKENS,
            "frequency_penalty": FREQUENCY_PENALTY,
        }).encode()  # fmt: skip
        for attempt in range(self.max_retries + 1):
            self.limiter.wait()
            retry_after = None
            try:
                reply = self._post(body)
            except urllib.error.HTTPError as e:
                detail = self._redact(_body(e)[:LOG_BODY_CHARS])
                if e.code != 429 and e.code < 500:
                    raise RequestFailed(f"{what}: HTTP {e.code} {e.reason}: {detail}") from None
                error = f"HTTP {e.code}"
                retry_after = _retry_after(e.headers.get("Retry-After"))
            except (
                urllib.error.URLError,
                TimeoutError,
                ConnectionError,
                http.client.HTTPException,
            ) as e:
                error = self._redact(f"{type(e).__name__}: {e}")
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise RequestFailed(f"{what}: the reply is not JSON ({e})") from None
            else:
                try:
                    text = reply["choices"][0]["message"]["content"]
                except (KeyError, IndexError, TypeError):
                    text = None
                if not isinstance(text, str) or not text.strip():
                    raise RequestFailed(f"{what}: no completion text in the reply")
                return text.strip()
            if attempt == self.max_retries:
                raise RequestFailed(f"{what}: {error}, {self.max_retries} retries used up")
            delay = self._delay(attempt, retry_after)
            log.warning("%s: %s; retry %d/%d in %.2fs", what, error, attempt + 1,
                        self.max_retries, delay)  # fmt: skip
            self.sleep(delay)
        raise AssertionError("unreachable")


def _body(error: urllib.error.HTTPError) -> str:
    try:
        return error.read().decode("utf-8", "replace")
    except (OSError, AttributeError, http.client.HTTPException):
        return ""


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class DescriptionsFile:
    """The output JSON: loaded when it exists (to resume), rewritten atomically, throttled."""

    def __init__(self, path: Path, flush_every_s: float):
        self.path, self.flush_every_s = path, flush_every_s
        self.items: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._dirty = False
        if path.exists():
            try:
                items = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InputDataError(f"{path}: not readable JSON ({e}); move it away") from e
            items = items if isinstance(items, list) else [items]
            for k, item in enumerate(items):
                if not isinstance(item, dict) or not isinstance(item.get("image"), str):
                    raise InputDataError(f"{path} [item {k}]: expected a dict with 'image'")
                self.items[item["image"]] = item

    def described(self) -> set[str]:
        return {
            name
            for name, item in self.items.items()
            if isinstance(item.get("description"), str) and item["description"].strip()
        }

    def add(self, item: dict[str, Any]) -> None:
        with self._lock:
            self.items[item["image"]] = item
            self._dirty = True
            if time.monotonic() - self._last_flush >= self.flush_every_s:
                self._write()

    def flush(self) -> None:
        with self._lock:
            if self._dirty:
                self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(list(self.items.values()), f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._last_flush, self._dirty = time.monotonic(), False


@dataclasses.dataclass
class Summary:
    described: int = 0
    skipped: int = 0
    failed: int = 0

    def line(self) -> str:
        return f"described {self.described}, skipped {self.skipped}, failed {self.failed}"


def describe_all(
    annotated: Sequence[records.ImageRecord],
    out: DescriptionsFile,
    client: ChatClient,
    *,
    concurrency: int = 4,
    limit: int | None = None,
) -> Summary:
    """Describes every record not yet in `out` (at most `limit` new ones), `concurrency` at a
    time; writes the file as results arrive and once more at the end, even when interrupted."""
    done = out.described()
    todo = [r for r in annotated if r.image not in done and r.people]
    summary = Summary(skipped=len(annotated) - len(todo))
    if limit is not None:
        todo = todo[:limit]

    def describe(record: records.ImageRecord) -> dict[str, Any]:
        text = client.complete(SYSTEM_PROMPT, user_prompt(record), record.image)
        return published_item(record, text)

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        futures = {executor.submit(describe, r): r for r in todo}
        for future in concurrent.futures.as_completed(futures):
            try:
                out.add(future.result())
                summary.described += 1
            except RequestFailed as e:
                summary.failed += 1
                log.error("failed: %s", e)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        out.flush()
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m input_pipeline.prepare.describe_with_llm",
        description="Describe MPII poses with an OpenAI-compatible LLM (resumable).",
    )
    parser.add_argument(
        "--annotations",
        required=True,
        help="mmpose mpii_{train,val}.json, the official .mat or descriptions JSON",
    )
    parser.add_argument("--out", required=True, help="descriptions JSON to write (and resume)")
    parser.add_argument("--model", required=True, help="model name, e.g. gpt-4")
    parser.add_argument("--base_url", required=True, help="e.g. https://api.openai.com/v1")
    parser.add_argument("--api_key_env", default="OPENAI_API_KEY",
                        help="environment variable holding the API key")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests_per_minute", type=float, default=60.0, help="0: no limit")
    parser.add_argument("--max_retries", type=int, default=6)
    parser.add_argument("--limit", type=int, default=None, help="describe at most N new images")
    parser.add_argument("--backoff_seconds", type=float, default=1.0, help="first retry's delay")
    parser.add_argument("--max_backoff_seconds", type=float, default=60.0)
    parser.add_argument("--timeout_seconds", type=float, default=120.0)
    parser.add_argument("--flush_seconds", type=float, default=5.0,
                        help="rewrite the output at most this often (and at the end)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> Summary:
    args = _parser().parse_args(argv)
    api_key = os.environ.get(args.api_key_env, "")
    if not api_key:
        raise SystemExit(
            f"The environment variable {args.api_key_env} is not set: put the API key of "
            f"{args.base_url} in it (or name another variable with --api_key_env)."
        )
    annotations = Path(args.annotations)
    if not annotations.exists():
        raise SystemExit(f"{annotations}: annotations not found; get {sources.MMPOSE_ANNOTATIONS}")
    try:
        annotated = mpii.read_annotations(annotations)
        out = DescriptionsFile(Path(args.out), args.flush_seconds)
    except InputDataError as e:
        raise SystemExit(str(e)) from None
    client = ChatClient(
        base_url=args.base_url,
        api_key=api_key,
        model=args.model,
        limiter=RateLimiter(args.requests_per_minute),
        max_retries=args.max_retries,
        backoff_s=args.backoff_seconds,
        max_backoff_s=args.max_backoff_seconds,
        timeout_s=args.timeout_seconds,
    )
    log.info("%d images in %s; writing %s", len(annotated), annotations, args.out)
    summary = describe_all(annotated, out, client, concurrency=args.concurrency, limit=args.limit)
    log.info("%s: %s", args.out, summary.line())
    print(summary.line())
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        sys.exit(1 if main().failed else 0)
    except KeyboardInterrupt:
        sys.exit("interrupted: finished descriptions are saved; rerun the command to go on")
