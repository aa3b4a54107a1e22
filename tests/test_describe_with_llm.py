"""The LLM description tool against a fake OpenAI-compatible server on 127.0.0.1 (no network)."""

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from input_pipeline.errors import InputDataError
from input_pipeline.prepare import describe_with_llm as dl
from input_pipeline.prepare import mpii
from tests.test_writer_lock import hold_as_another_run

API_KEY = "sk-test-0123456789-secret"
FAST = {"requests_per_minute": 0, "backoff_seconds": 0.001, "max_backoff_seconds": 0.01}

# What the fake server does for a request: (status, headers, body), "drop" (close without a
# reply) or a number of seconds to stall before answering normally.
Action = tuple[int, dict[str, str], str] | str | float


def completion(text: str) -> tuple[int, dict[str, str], str]:
    reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    return 200, {"Content-Type": "application/json"}, json.dumps(reply)


def canned(body: dict) -> tuple[int, dict[str, str], str]:
    """The answer for an image: names its activity, read back from the prompt."""
    sample = json.loads(body["messages"][1]["content"])
    return completion(f"There are {sample['count']} people doing {sample.get('activity')}.")


class FakeServer:
    """Records (path, Authorization, JSON body) of each POST; `script(n, body)` picks the action
    for the n-th request (None: the canned completion)."""

    def __init__(self, script: Callable[[int, dict], Action | None]):
        self.requests: list[tuple[str, str | None, dict]] = []
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    n = len(server.requests)
                    server.requests.append((self.path, self.headers.get("Authorization"), body))
                action = script(n, body)
                if action == "drop":
                    self.close_connection = True
                    return
                if isinstance(action, float):
                    time.sleep(action)
                    action = None
                status, headers, text = action or canned(body)
                if "{auth}" in text:  # a server that echoes the key back in an error
                    text = text.replace("{auth}", self.headers.get("Authorization", ""))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # timed out
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(text.encode())))
                    self.end_headers()
                    self.wfile.write(text.encode())

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def activities(self) -> list[str]:
        return [
            json.loads(b["messages"][1]["content"]).get("activity") for _, _, b in self.requests
        ]


@contextlib.contextmanager
def serving(script: Callable[[int, dict], Action | None]) -> Iterator[FakeServer]:
    server = FakeServer(script)
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def joints(seed: int) -> np.ndarray:
    """16 joints (1-based MATLAB pixels, 3 decimals) inside a 640×480 image."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(2, 638, 16), rng.uniform(2, 478, 16)], 1).round(3)


def annotations(tmp_path: Path, num_images: int = 4) -> Path:
    """Annotations in the published descriptions format (without descriptions): image i has
    activity "activity i"; image 1 has two people; image 0 has invisible joints."""
    items = []
    for i in range(num_images):
        people = []
        for j in range(2 if i == 1 else 1):
            vis = np.ones(16, int)
            kpts = joints(10 * i + j)
            if i == 0:
                vis[[0, 5, 9]] = 0
                kpts[[0, 5, 9]] = -1
            people.append({"id": j, "center": [320.5, 240.0], "scale": 2.5,
                           "kpts": kpts.tolist(), "kpts_vis": vis.tolist()})  # fmt: skip
        items.append({"image": f"{i:09d}.jpg", "activity": f"sports, activity {i}",
                      "count": len(people), "people": people})  # fmt: skip
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(items))
    return path


def run(server: FakeServer, ann: Path, out: Path, **options: float) -> dl.Summary:
    return dl.describe_file(ann, out, model="gpt-4", base_url=server.base_url, **FAST | options)


def test_prompt_is_the_authors_format(tmp_path):
    """The user message: activity, count, people with integer 1-based kpts ([-1, -1] invisible),
    as the authors' generate_captions.py built it from the same file."""
    ann = annotations(tmp_path)
    record = next(r for r in mpii.read_annotations(ann) if r.image == "000000000.jpg")
    sample = json.loads(dl.user_prompt(record))
    raw = json.loads(ann.read_text())[0]
    expected_kpts = [
        [int(x), int(y)] if v else [-1, -1]
        for (x, y), v in zip(raw["people"][0]["kpts"], raw["people"][0]["kpts_vis"], strict=True)
    ]
    assert sample == {
        "activity": "sports, activity 0",
        "count": 1,
        "people": [{"id": 0, "center": [320.5, 240.0], "scale": 2.5, "kpts": expected_kpts}],
    }
    # mmpose JSON (no activity): the key is left out, as the authors' prompt had none to give.
    mmpose = tmp_path / "mpii_val.json"
    row = {"image": "a.jpg", "joints": joints(0).tolist(), "joints_vis": [1] * 16, "scale": 1.0}
    mmpose.write_text(json.dumps([row]))
    sample = json.loads(dl.user_prompt(mpii.read_annotations(mmpose)[0]))
    assert "activity" not in sample and sample["count"] == 1
    assert sample["people"][0]["kpts"] == [[int(x), int(y)] for x, y in joints(0)]
    assert "16 keypoints in order: 0 - right ankle" in dl.SYSTEM_PROMPT


def test_retries_failures_output_and_round_trip(tmp_path, caplog):
    caplog.set_level("INFO")
    failing_first = {0: (429, {"Retry-After": "0"}, "slow down"), 1: (500, {}, "oops"), 2: "drop"}

    def script(n: int, body: dict) -> Action | None:
        if "activity 2" in body["messages"][1]["content"]:
            return 400, {}, "bad request from {auth}"
        return failing_first.get(n)

    ann, out = annotations(tmp_path), tmp_path / "out" / "descriptions.json"
    with serving(script) as server:
        summary = run(server, ann, out, concurrency=2, flush_seconds=0)
    assert (summary.described, summary.skipped, summary.failed) == (3, 0, 1)
    # 4 images, 3 retried failures, the 400 not retried.
    assert len(server.requests) == 7
    for path, auth, body in server.requests:
        assert path == "/v1/chat/completions" and auth == f"Bearer {API_KEY}"
        assert body["model"] == "gpt-4" and body["temperature"] == 0.5
        assert body["max_tokens"] == 512 and body["messages"][0]["content"] == dl.SYSTEM_PROMPT
    assert sorted(set(server.activities())) == [f"sports, activity {i}" for i in range(4)]
    assert server.activities().count("sports, activity 2") == 1
    assert "described 3, skipped 0, failed 1 (the first: 000000002.jpg: HTTP 400" in caplog.text
    assert summary.line().startswith("described 3, skipped 0, failed 1 (the first: 000000002.jpg")
    assert API_KEY not in summary.line()
    # The key never reaches logs, output or the file, even when a server echoes it back.
    assert API_KEY not in caplog.text and API_KEY not in out.read_text()
    assert "<api key>" in caplog.text
    # Round trip through the repo's reader: descriptions, activities, keypoints, visibility.
    read = mpii.read_descriptions(out)
    source = {r.image: r for r in mpii.read_annotations(ann)}
    assert sorted(read) == ["000000000.jpg", "000000001.jpg", "000000003.jpg"]
    for name, record in read.items():
        want = source[name]
        assert record.activity == want.activity
        count = len(want.people)
        assert record.descriptions == {
            "default": f"There are {count} people doing {want.activity}."
        }
        assert len(record.people) == count
        for got, exp in zip(record.people, want.people, strict=True):
            np.testing.assert_array_equal(got.visible, exp.visible)
            np.testing.assert_allclose(got.keypoints[exp.visible], exp.keypoints[exp.visible],
                                       atol=1e-3)  # fmt: skip
            assert got.center == pytest.approx(exp.center) and got.scale == exp.scale
    assert not list(out.parent.glob("*.tmp"))


def test_resume_skips_described_images(tmp_path):
    ann, out = annotations(tmp_path, num_images=5), tmp_path / "descriptions.json"
    with serving(lambda n, body: None) as server:
        first = run(server, ann, out, limit=2, concurrency=1)
        first_asked = server.activities()
        second = run(server, ann, out, concurrency=3)
        second_asked = server.activities()[len(first_asked) :]
        third = run(server, ann, out)
    assert (first.described, first.skipped, first.failed) == (2, 0, 0)
    assert (second.described, second.skipped, second.failed) == (3, 2, 0)
    assert (third.described, third.skipped) == (0, 5)
    assert len(first_asked) == 2 and len(second_asked) == 3
    assert not set(first_asked) & set(second_asked)
    assert len(server.requests) == 5
    assert len(mpii.read_descriptions(out)) == 5


def test_a_second_run_on_the_same_out_is_refused_before_asking(tmp_path):
    """Two runs on one --out would each rewrite it without the other's descriptions: the second
    is refused in one line naming the first, before any request, the output untouched."""
    ann, out = annotations(tmp_path), tmp_path / "descriptions.json"
    with serving(lambda n, body: None) as server:
        run(server, ann, out, limit=1)
        before = out.read_bytes()
        lock = Path(f"{out}{dl.LOCK_SUFFIX}")
        assert not lock.exists()
        hold_as_another_run(lock, pid=os.getpid(), command="describe_with_llm (the first)")
        with pytest.raises(InputDataError, match=rf"^--out={out}: another description run is "):
            run(server, ann, out)
        assert len(server.requests) == 1
    assert out.read_bytes() == before and lock.exists()


def test_the_annotations_or_another_format_are_never_rewritten(tmp_path):
    """`--out` set to the annotations (or to any mmpose file) rewrote it as a mix of formats, and
    a preparation from it then lost most images."""
    ann = annotations(tmp_path)
    mmpose = tmp_path / "mpii_val.json"
    mmpose.write_text(json.dumps([{"image": "a.jpg", "joints": [[1, 2]] * 16, "scale": 1.0}]))
    before = {path: path.read_bytes() for path in (ann, mmpose)}
    with serving(lambda n, body: None) as server:
        with pytest.raises(InputDataError, match=rf"^--out={ann}: is --annotations={ann}"):
            run(server, ann, ann)
        with pytest.raises(InputDataError, match=r"\[item 0\]: not a descriptions record"):
            run(server, ann, mmpose)
        assert not server.requests
    assert {path: path.read_bytes() for path in (ann, mmpose)} == before


def test_interrupted_run_keeps_what_was_done(tmp_path):
    """Ctrl-C mid-run: what was described is written (even with a long flush interval), and the
    rerun asks only for the rest."""
    ann, out = annotations(tmp_path), tmp_path / "descriptions.json"
    records = mpii.read_annotations(ann)
    with serving(lambda n, body: None) as server:
        client = dl.ChatClient(server.base_url, API_KEY, "m", dl.RateLimiter(0), backoff_s=0.001)
        calls = []

        def complete(system: str, user: str, what: str) -> str:
            calls.append(what)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return dl.ChatClient.complete(client, system, user, what)

        client.complete = complete
        with pytest.raises(KeyboardInterrupt):
            dl.describe_all(records, dl.DescriptionsFile(out, 3600.0), client, concurrency=1)
        assert sorted(mpii.read_descriptions(out)) == ["000000000.jpg", "000000001.jpg"]
        time.sleep(0.2)  # a request already in flight when interrupted (concurrency 1) ends
        interrupted = len(server.requests)
        summary = run(server, ann, out)
    assert interrupted <= 3  # 2 described + at most `concurrency` in flight, whose text is lost
    assert (summary.described, summary.skipped) == (2, 2)
    rerun = server.activities()[interrupted:]
    assert sorted(rerun) == ["sports, activity 2", "sports, activity 3"]


def test_backoff_honours_retry_after_and_timeouts_are_retried():
    actions = {0: (429, {"Retry-After": "7"}, ""), 1: (503, {}, ""), 2: 0.6}
    slept: list[float] = []
    with serving(lambda n, body: actions.get(n)) as server:
        client = dl.ChatClient(server.base_url, API_KEY, "m", dl.RateLimiter(0), max_retries=3,
                               backoff_s=0.5, timeout_s=0.3, sleep=slept.append)  # fmt: skip
        assert (
            client.complete("s", json.dumps({"count": 1}), "x") == "There are 1 people doing None."
        )
        assert len(server.requests) == 4
    assert slept[0] >= 7.0  # the server's Retry-After, above the 0.25–0.5 s backoff
    assert 0.5 <= slept[1] <= 1.0 and 1.0 <= slept[2] <= 2.0  # doubling, with jitter
    # Retries used up: a failure naming the request; exactly max_retries + 1 attempts.
    with serving(lambda n, body: (500, {}, "")) as server:
        client = dl.ChatClient(server.base_url, API_KEY, "m", dl.RateLimiter(0), max_retries=2,
                               sleep=lambda s: None)  # fmt: skip
        with pytest.raises(dl.RequestFailed, match=r"img\.jpg: HTTP 500, 2 retries used up"):
            client.complete("s", "{}", "img.jpg")
        assert len(server.requests) == 3


def test_retry_after_forms_and_key_not_in_repr():
    assert dl._retry_after("2.5") == 2.5 and dl._retry_after(None) is None
    assert dl._retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert dl._retry_after("soon") is None
    client = dl.ChatClient("http://127.0.0.1:9/v1", API_KEY, "m", dl.RateLimiter(0))
    assert API_KEY not in repr(client)


def test_rate_limit_spaces_requests():
    limiter = dl.RateLimiter(requests_per_minute=1200)  # one per 50 ms
    start = time.monotonic()
    threads = [threading.Thread(target=limiter.wait) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start >= 0.15 - 1e-3


def test_missing_key_or_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_LLM_KEY", raising=False)
    ann, out = annotations(tmp_path), tmp_path / "o.json"
    options = {"model": "m", "base_url": "http://127.0.0.1:9/v1"}
    with pytest.raises(InputDataError, match="MY_LLM_KEY is not set"):
        dl.describe_file(ann, out, api_key_env="MY_LLM_KEY", **options)
    with pytest.raises(InputDataError, match=r"nothing\.json: annotations not found"):
        dl.describe_file(tmp_path / "nothing.json", out, **options)
    out.write_text("{not json")
    with pytest.raises(InputDataError, match=r"o\.json: not readable JSON"):
        dl.describe_file(ann, out, **options)


def test_progress_logs_done_total_rate_and_eta(caplog):
    """Every N images or T seconds, and at the end: hours of requests are never silent."""
    caplog.set_level("INFO")
    progress = dl.Progress(total=5, every=2, seconds=3600.0)
    for _ in range(5):
        progress.step()
    progress.finish()
    lines = [r.getMessage() for r in caplog.records if "images/s" in r.getMessage()]
    assert [line.split(" images")[0] for line in lines] == ["2/5", "4/5", "5/5"]
    assert "ETA 0 s" in lines[-1] and "(100%)" in lines[-1]
