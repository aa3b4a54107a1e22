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
interrupted run loses at most those seconds; a rerun skips images already described. One run
writes an output at a time: `<out>.lock` names it, and a second run exits with one line naming
the first (two would each rewrite the file without the other's descriptions). Requests run
in a thread pool under a client-side rate limit; 429, 5xx, timeouts and connection errors are
retried with exponential backoff and jitter (at least the server's Retry-After); other errors fail
that image only, which the next run retries. Progress (done/total, rate, ETA) is logged every
`PROGRESS_EVERY` images or `PROGRESS_SECONDS` seconds: at 60 requests a minute a full split
takes hours.
"""

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

from absl import app, flags

from input_pipeline import cli, records, sources, writer_lock
from input_pipeline.errors import InputDataError
from input_pipeline.prepare import mpii

PROGRESS_EVERY = 100  # images between progress lines, at most
PROGRESS_SECONDS = 10.0  # seconds between progress lines, at most
LOCK_SUFFIX = ".lock"  # `<out>.lock`: the run writing `<out>` (`writer_lock`)

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
                if not isinstance(item.get("people"), list):
                    raise InputDataError(
                        f"{path} [item {k}]: not a descriptions record (no 'people' list; "
                        "annotations in another format?): --out must be a descriptions JSON "
                        "this tool wrote; not replaced"
                    )
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
    first_failure: str = ""  # the reason of the first image that failed, for the last line

    def line(self) -> str:
        line = f"described {self.described}, skipped {self.skipped}, failed {self.failed}"
        return f"{line} (the first: {self.first_failure})" if self.first_failure else line


class Progress:
    """Logs `done/total`, the rate and the ETA every `every` items or `seconds` seconds, and at
    the end (`finish`)."""

    def __init__(self, total: int, every: int = PROGRESS_EVERY, seconds: float = PROGRESS_SECONDS):
        self.total, self.every, self.seconds = total, every, seconds
        self.done, self._start = 0, time.monotonic()
        self._last_done, self._last_time = 0, self._start

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.done - self._last_done >= self.every or now - self._last_time >= self.seconds:
            self._log(now)

    def finish(self) -> None:
        if self.done != self._last_done:
            self._log(time.monotonic())

    def _log(self, now: float) -> None:
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate else float("inf")
        log.info(
            "%d/%d images (%.0f%%) in %.0f s, %.2f images/s, ETA %s",
            self.done, self.total, 100 * self.done / max(self.total, 1), elapsed, rate,
            f"{eta:.0f} s" if eta != float("inf") else "unknown",
        )  # fmt: skip
        self._last_done, self._last_time = self.done, now


def describe_all(
    annotated: Sequence[records.ImageRecord],
    out: DescriptionsFile,
    client: ChatClient,
    *,
    concurrency: int = 4,
    limit: int | None = None,
) -> Summary:
    """Describes every record not yet in `out` (at most `limit` new ones), `concurrency` at a
    time; writes the file as results arrive and once more at the end, even when interrupted;
    logs its progress (`Progress`)."""
    done = out.described()
    todo = [r for r in annotated if r.image not in done and r.people]
    summary = Summary(skipped=len(annotated) - len(todo))
    if limit is not None:
        todo = todo[:limit]
    progress = Progress(len(todo))

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
                summary.first_failure = summary.first_failure or str(e)
                log.error("failed: %s", e)
            progress.step()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        out.flush()
        progress.finish()
    return summary


def describe_file(
    annotations: str | Path,
    out: str | Path,
    *,
    model: str,
    base_url: str,
    api_key_env: str = "OPENAI_API_KEY",
    concurrency: int = 4,
    requests_per_minute: float = 60.0,
    max_retries: int = 6,
    limit: int | None = None,
    backoff_seconds: float = 1.0,
    max_backoff_seconds: float = 60.0,
    timeout_seconds: float = 120.0,
    flush_seconds: float = 5.0,
    takeover_lock: bool = False,
) -> Summary:
    """Describes the images of `annotations` into `out` (resuming it), one run at a time
    (`<out>.lock`); the API key is read from the environment variable `api_key_env`. A user's
    mistake is an `InputDataError`."""
    api_key = os.environ.get(api_key_env, "")
    if not api_key:
        raise InputDataError(_key_missing(api_key_env, base_url))
    annotations = Path(annotations)
    if not annotations.exists():
        raise InputDataError(
            f"{annotations}: annotations not found; get {sources.MMPOSE_ANNOTATIONS}"
        )
    cli.refuse_inputs_as_output("--out", out, {"--annotations": annotations})
    annotated = mpii.read_annotations(annotations)
    client = ChatClient(
        base_url=base_url,
        api_key=api_key,
        model=model,
        limiter=RateLimiter(requests_per_minute),
        max_retries=max_retries,
        backoff_s=backoff_seconds,
        max_backoff_s=max_backoff_seconds,
        timeout_s=timeout_seconds,
    )
    with writer_lock.hold(
        f"{out}{LOCK_SUFFIX}", f"--out={out}", writer_lock.DESCRIPTION, takeover=takeover_lock
    ):
        descriptions = DescriptionsFile(Path(out), flush_seconds)
        log.info("%d images in %s; writing %s", len(annotated), annotations, out)
        summary = describe_all(
            annotated, descriptions, client, concurrency=concurrency, limit=limit
        )
    log.info("%s: %s", out, summary.line())
    return summary


def _key_missing(api_key_env: str, base_url: str = "the server") -> str:
    return (
        f"the environment variable {api_key_env} is not set: put the API key of {base_url} in "
        "it (or name another variable with --api_key_env)"
    )


FLAGS = flags.FLAGS
NUMBERS = {  # the client's and the writer's settings: passed on as they are named
    "concurrency": cli.Number(integer=True, at_least=1),
    "requests_per_minute": cli.Number(at_least=0),  # 0: no limit
    "max_retries": cli.Number(integer=True, at_least=0),
    "backoff_seconds": cli.Number(at_least=0),
    "max_backoff_seconds": cli.Number(at_least=0),
    "timeout_seconds": cli.Number(above=0),
    "flush_seconds": cli.Number(at_least=0),
}


def define_flags() -> None:
    """Defined only when run as a program: importing this module must not claim flag names."""
    flags.DEFINE_string(
        "annotations", None, "mmpose mpii_{train,val}.json, the official .mat or descriptions JSON"
    )
    flags.DEFINE_string("out", None, "Descriptions JSON to write (and resume).")
    flags.DEFINE_string("model", None, "Model name, e.g. gpt-4.")
    flags.DEFINE_string("base_url", None, "e.g. https://api.openai.com/v1")
    flags.DEFINE_string("api_key_env", "OPENAI_API_KEY", "Environment variable holding the key.")
    flags.DEFINE_integer("concurrency", 4, "Requests in flight at a time.")
    flags.DEFINE_float("requests_per_minute", 60.0, "Client-side rate limit; 0: no limit.")
    flags.DEFINE_integer("max_retries", 6, "Retries of a request that failed transiently.")
    flags.DEFINE_integer("limit", None, "Describe at most N new images.")
    flags.DEFINE_float("backoff_seconds", 1.0, "The first retry's delay (doubling after).")
    flags.DEFINE_float("max_backoff_seconds", 60.0, "The longest delay between retries.")
    flags.DEFINE_float("timeout_seconds", 120.0, "A request's timeout.")
    flags.DEFINE_float(
        "flush_seconds", 5.0, "Rewrite the output at most this often (and at the end)."
    )
    writer_lock.define_takeover_flag()
    flags.mark_flags_as_required(["annotations", "out", "model", "base_url"])
    cli.check_flags(
        annotations=cli.Path("file"),
        out=cli.Path("new_file"),
        model=cli.Text(lambda name: None if name.strip() else "empty: name the model"),
        base_url=cli.Text(_url_problem),
        api_key_env=cli.Text(lambda name: None if os.environ.get(name) else _key_missing(name)),
        limit=cli.Number(integer=True, at_least=1),
        **NUMBERS,
    )


def _url_problem(url: str) -> str | None:
    if url.startswith(("http://", "https://")) and len(url.split("://", 1)[1]) > 0:
        return None
    return "expected an http:// or https:// base URL, e.g. https://api.openai.com/v1"


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger(__name__).setLevel(logging.INFO)  # progress, above absl's WARNING
    try:
        summary = describe_file(
            FLAGS.annotations,
            FLAGS.out,
            model=FLAGS.model,
            base_url=FLAGS.base_url,
            api_key_env=FLAGS.api_key_env,
            limit=FLAGS.limit,
            takeover_lock=FLAGS.takeover_lock,
            **{name: FLAGS[name].value for name in NUMBERS},
        )
    except KeyboardInterrupt:
        sys.exit("interrupted: finished descriptions are saved; rerun the command to go on")
    print(summary.line())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
