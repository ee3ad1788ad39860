"""``densenets serve``: a real uvicorn server on 127.0.0.1, started by the tests as a subprocess
(``python -m densenets serve RUN``) over a tiny model trained by the real CLI."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")

import densenets  # noqa: E402
from densenets.cli.main import main as cli_main  # noqa: E402

from .fakedata import class_images  # noqa: E402

SRC = Path(densenets.__file__).resolve().parents[1]
# A class name that is also HTML: the page must show it as text, never run it.
CLASSES = ["cat", "dog", "<img src=x onerror=window.pwned=1>"]
KEY = "s3cret-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A 3-class DenseNet-BC trained for one epoch on a tiny image folder by ``densenets train``."""
    root = tmp_path_factory.mktemp("serve")
    for part, n, seed in (("train", 8, 0), ("val", 2, 1)):
        images, labels = class_images(n * len(CLASSES), len(CLASSES), size=32, seed=seed)
        for i, (img, c) in enumerate(zip(images, labels, strict=True)):
            folder = root / "data" / part / CLASSES[c]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"img{i}.png")
    run = root / "run"
    assert cli_main(["train", "--data", "imagefolder", "--data-dir", str(root / "data"), "--model",
                     "densenet_bc16_k4", "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0",
                     "--run-dir", str(run), "--no-progress"]) == 0  # fmt: skip
    return run


@pytest.fixture(scope="module")
def images(run_dir) -> dict[str, Path]:
    """Image files in the modes predict converts: RGB, grey, RGBA, palette, 16-bit, CMYK JPEG, animated GIF."""
    folder = run_dir.parent / "uploads"
    folder.mkdir()
    rgb = Image.fromarray(class_images(3, 3, size=40, seed=7)[0][2])
    variants = {
        "rgb.png": rgb,
        "grey.png": rgb.convert("L"),
        "rgba.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"),
        "sixteen.png": Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 200),
        "cmyk.jpg": rgb.convert("CMYK"),
    }
    paths = {}
    for name, image in variants.items():
        image.save(folder / name)
        paths[name] = folder / name
    frames = [rgb, rgb.rotate(90)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    paths["animated.gif"] = folder / "animated.gif"
    assert Image.open(paths["sixteen.png"]).mode.startswith("I")
    assert Image.open(paths["cmyk.jpg"]).mode == "CMYK"
    return paths


class Server:
    def __init__(self, run: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
        env.pop("DENSENETS_API_KEY", None)
        cmd = [sys.executable, "-m", "densenets", "serve", str(run), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        for _ in range(1200):  # a generous wait for torch's import on a busy machine, not a timing check
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {''.join(self.lines)}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not answer: {''.join(self.lines)}")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def metric(self, name: str, **headers) -> float:
        text = requests.get(self.url + "/metrics", headers=headers, timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture(scope="module")
def server(run_dir):
    s = Server(run_dir, "--max-batch", "8", "--max-wait-ms", "300", "--batch-wait", "window", "--max-files", "4",
               "--max-body-mb", "1", "--max-pixels", "1000000")  # fmt: skip
    yield s
    s.stop()


def post(server, files, route="/v1/predict", field="file", data=None, params=None, headers=None):
    parts = [(field, (name, content, "application/octet-stream")) for name, content in files]
    return requests.post(server.url + route, files=parts, data=data, params=params, headers=headers, timeout=120)


def upload(path: Path) -> tuple[str, bytes]:
    return path.name, path.read_bytes()


def predicted_by_cli(run_dir, paths, capsys) -> list[dict]:
    capsys.readouterr()
    assert cli_main(["predict", str(run_dir), *map(str, paths), "--json", "--top-k", "3"]) == 0
    return json.loads(capsys.readouterr().out)


# -- API contract ------------------------------------------------------------------------------


def test_start_line_names_model_weights_backend_precision_and_address(server):
    line = next(line for line in server.lines if line.startswith("serving "))
    for part in ("densenet_bc16_k4", "last.pt", "torch", "fp32", f"http://127.0.0.1:{server.port}"):
        assert part in line


def test_model_health_docs_and_predict_contract(server, images):
    model = requests.get(server.url + "/v1/model", timeout=10).json()
    assert model["model"] == "densenet_bc16_k4" and model["classes"] == sorted(CLASSES)
    assert (model["backend"], model["precision"], model["multilabel"]) == ("torch", "fp32", False)
    assert model["can_explain"]
    assert model["preprocessing"]["crop"] == 32 and model["version"] == densenets.__version__
    assert requests.get(server.url + "/healthz", timeout=10).json()["status"] == "ok"
    assert requests.get(server.url + "/docs", timeout=10).status_code == 200
    assert {"/v1/predict", "/v1/explain", "/v1/model"} <= set(
        requests.get(server.url + "/openapi.json").json()["paths"]
    )
    answer = post(server, [upload(images["rgb.png"]), upload(images["grey.png"])], params={"top_k": 2})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model"], body["backend"], body["precision"]) == ("densenet_bc16_k4", "torch", "fp32")
    assert [p["filename"] for p in body["predictions"]] == ["rgb.png", "grey.png"]
    for p in body["predictions"]:
        assert len(p["top_k"]) == 2 and set(p["top_k"][0]) >= {"label", "probability"}
        assert p["top_k"][0]["probability"] >= p["top_k"][1]["probability"]


def test_answers_equal_densenets_predict_in_every_image_mode(server, images, run_dir, capsys):
    paths = list(images.values())
    expected = predicted_by_cli(run_dir, paths, capsys)
    answer = post(server, [upload(p) for p in paths[:4]]).json()["predictions"]
    answer += post(server, [upload(p) for p in paths[4:]]).json()["predictions"]
    for ours, theirs in zip(answer, expected, strict=True):
        assert "error" not in theirs, theirs
        assert [e["label"] for e in ours["top_k"]] == [e["class"] for e in theirs["predictions"]]
        for a, b in zip(ours["top_k"], theirs["predictions"], strict=True):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_explain_draws_the_class_asked_at_predicts_probability(server, images, run_dir, capsys):
    (expected,) = predicted_by_cli(run_dir, [images["rgb.png"]], capsys)
    wanted = expected["predictions"][-1]  # the least probable: not what explain would pick by itself
    answer = post(server, [upload(images["rgb.png"])], "/v1/explain", data={"class": wanted["class"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    (explained,) = body["explained"]
    assert explained["class"] == wanted["class"]
    assert explained["probability"] == pytest.approx(wanted["probability"], abs=1e-5)
    heat = np.array(explained["map"])
    assert heat.shape == (32, 32) and heat.min() >= 0 and heat.max() <= 1
    assert Image.open(io.BytesIO(base64.b64decode(body["overlay_png"]))).format == "PNG"
    default = post(server, [upload(images["rgb.png"])], "/v1/explain").json()
    assert [e["class"] for e in default["explained"]] == [expected["predictions"][0]["class"]]


# -- bad input: a clear 4xx, and the server stays healthy -------------------------------------


def _png(size=(40, 40), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG")
    return out.getvalue()


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(class_images(1, 3, size=64)[0][0]).save(out, "JPEG")
    return out.getvalue()


BAD_INPUTS = {
    "not an image": (lambda: [("notes.txt", b"hello, not an image")], {}, 400, "not a readable image"),
    "empty body": (lambda: [("empty.png", b"")], {}, 400, "empty file"),
    "truncated PNG": (lambda: [("half.png", _png()[: len(_png()) // 2])], {}, 400, "not a readable image"),
    "truncated JPEG": (lambda: [("half.jpg", _jpeg()[: len(_jpeg()) // 2])], {}, 400, "not a readable image"),
    "decompression bomb": (lambda: [("bomb.png", _png((2000, 2000), "L"))], {}, 413, "beyond the limit"),
    "body beyond --max-body-mb": (lambda: [("big.png", os.urandom(2 * 2**20))], {}, 413, "--max-body-mb"),
    "too many files": (lambda: [(f"{i}.png", _png()) for i in range(5)], {}, 413, "--max-files"),
    "wrong field name": (lambda: [("a.png", _png())], {"field": "image"}, 422, "file"),
    "top_k of 0": (lambda: [("a.png", _png())], {"params": {"top_k": 0}}, 422, "top_k"),
    "explain an unknown class": (
        lambda: [("a.png", _png())],
        {"route": "/v1/explain", "data": {"class": "zebra"}},
        400,
        "unknown class",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_clear_4xx_and_the_server_stays_healthy(server, images, case):
    files, options, status, words = BAD_INPUTS[case]
    answer = post(server, files(), **options)
    assert answer.status_code == status, answer.text
    assert words in json.dumps(answer.json()["detail"])
    health = requests.get(server.url + "/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["arriving"] == 0  # a refused request is no longer awaited
    assert post(server, [upload(images["rgb.png"])]).status_code == 200


def test_refusals_are_counted_by_kind(server):
    assert post(server, [("x.txt", b"nope")]).status_code == 400
    assert server.metric('densenets_errors_total{kind="not_an_image"}') >= 1
    assert server.metric('densenets_requests_total{method="POST",route="/v1/predict",status="400"}') >= 1
    before = server.metric('densenets_errors_total{kind="body_too_large"}')
    assert post(server, [("big.png", os.urandom(2 * 2**20))]).status_code == 413
    assert server.metric('densenets_errors_total{kind="body_too_large"}') == before + 1


# -- dynamic batching --------------------------------------------------------------------------


def test_concurrent_requests_form_batches_and_get_their_own_answers(server, images):
    paths = list(images.values())
    alone = {p.name: post(server, [upload(p)]).json()["predictions"][0]["top_k"] for p in paths}
    batches_before = server.metric("densenets_batch_size_count")
    images_before = server.metric("densenets_batch_size_sum")
    start, answers = threading.Barrier(len(paths)), {}

    def ask(path):
        start.wait()
        answers[path.name] = post(server, [upload(path)]).json()["predictions"][0]["top_k"]

    threads = [threading.Thread(target=ask, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batches = server.metric("densenets_batch_size_count") - batches_before
    assert server.metric("densenets_batch_size_sum") - images_before == len(paths)
    assert batches < len(paths), "no two concurrent requests shared a forward pass"
    for name, top in answers.items():
        assert [e["label"] for e in top] == [e["label"] for e in alone[name]]
        for a, b in zip(top, alone[name], strict=True):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


# -- a second server: API key, a tiny queue, a long batching window, SIGTERM --------------------


@pytest.fixture(scope="module")
def guarded(run_dir):
    s = Server(run_dir, "--api-key", KEY, "--max-queue", "2", "--max-batch", "16", "--max-wait-ms", "2000",
               "--batch-wait", "window")  # fmt: skip
    yield s
    s.stop()


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_an_api_key_is_required_when_given(guarded, images):
    assert requests.get(guarded.url + "/v1/model", timeout=10).status_code == 401
    wrong = requests.get(guarded.url + "/v1/model", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert post(guarded, [upload(images["rgb.png"])]).status_code == 401
    assert requests.get(guarded.url + "/metrics", timeout=10).status_code == 401
    assert requests.get(guarded.url + "/v1/model", headers=AUTH, timeout=10).json()["model"] == "densenet_bc16_k4"


def test_binding_beyond_loopback_needs_a_key_or_no_auth(run_dir, capsys):
    assert cli_main(["serve", str(run_dir), "--host", "0.0.0.0"]) == 2
    assert "--api-key" in capsys.readouterr().err
    from densenets.serve.config import ServeConfig

    assert ServeConfig(str(run_dir), host="0.0.0.0", no_auth=True).checked().api_key is None
    os.environ["DENSENETS_API_KEY"] = "from-env"
    try:
        assert ServeConfig(str(run_dir), host="10.0.0.1").checked().api_key == "from-env"
    finally:
        del os.environ["DENSENETS_API_KEY"]


def _wait_until_idle(server) -> None:
    while requests.get(server.url + "/healthz", timeout=10).json()["queue_depth"]:
        time.sleep(0.05)


def test_a_full_queue_answers_503_with_retry_after_and_the_admitted_are_right(guarded, images):
    _wait_until_idle(guarded)
    expected = post(guarded, [upload(images["rgb.png"])], headers=AUTH).json()["predictions"][0]["top_k"]
    n = 6
    start, answers = threading.Barrier(n), []

    def ask():
        start.wait()
        answers.append(post(guarded, [upload(images["rgb.png"])], headers=AUTH))

    threads = [threading.Thread(target=ask) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [a for a in answers if a.status_code == 503]
    served = [a for a in answers if a.status_code == 200]
    assert refused and len(served) + len(refused) == n
    assert all(a.headers["Retry-After"].isdigit() and "busy" in a.json()["detail"] for a in refused)
    for a in served:
        assert [e["label"] for e in a.json()["predictions"][0]["top_k"]] == [e["label"] for e in expected]
    assert guarded.metric('densenets_errors_total{kind="queue_full"}', **AUTH) == len(refused)


def test_a_client_that_disconnects_does_not_poison_the_batch(guarded, images):
    _wait_until_idle(guarded)
    expected = post(guarded, [upload(images["grey.png"])], headers=AUTH).json()["predictions"][0]["top_k"]
    hung_up = []
    gone = threading.Thread(target=_ask_and_hang_up, args=(guarded, images["rgb.png"], hung_up))
    gone.start()
    answer = post(guarded, [upload(images["grey.png"])], headers=AUTH)  # lands in the same 2 s window
    gone.join()
    assert hung_up == [True], "the first client got an answer before hanging up"
    assert answer.status_code == 200
    top = answer.json()["predictions"][0]["top_k"]
    assert [(e["label"], round(e["probability"], 5)) for e in top] == [
        (e["label"], round(e["probability"], 5)) for e in expected
    ]
    _wait_until_idle(guarded)
    assert requests.get(guarded.url + "/healthz", timeout=10).json()["status"] == "ok"


def _ask_and_hang_up(server, path: Path, hung_up: list) -> None:
    """Send a request, stop waiting for it after 0.5 s (inside the 2 s window) and close the connection."""
    parts = [("file", (path.name, path.read_bytes(), "image/png"))]
    try:
        requests.post(server.url + "/v1/predict", files=parts, headers=AUTH, timeout=0.5)
        hung_up.append(False)
    except requests.exceptions.ReadTimeout:
        hung_up.append(True)


def test_sigterm_drains_the_request_in_flight_and_exits_0(guarded, images):
    _wait_until_idle(guarded)
    answers = []
    asking = threading.Thread(target=lambda: answers.append(post(guarded, [upload(images["rgb.png"])], headers=AUTH)))
    asking.start()
    while not requests.get(guarded.url + "/healthz", timeout=10).json()["queue_depth"]:
        time.sleep(0.02)  # the request now waits in the 2 s batching window
    guarded.proc.send_signal(signal.SIGTERM)
    asking.join()
    assert guarded.proc.wait(60) == 0
    (answer,) = answers
    assert answer.status_code == 200 and answer.json()["predictions"][0]["top_k"]


# -- two worker processes -----------------------------------------------------------------------


def test_two_workers_both_answer_count_metrics_and_exit_0_on_sigterm(run_dir, images):
    s = Server(run_dir, "--workers", "2", "--max-wait-ms", "50")
    try:
        assert "2 worker processes" in next(line for line in s.lines if line.startswith("serving "))
        expected = post(s, [upload(images["rgb.png"])]).json()["predictions"][0]["top_k"]
        pids = set()
        for _ in range(200):  # each request on a new connection: the kernel hands it to either worker
            answer = post(s, [upload(images["rgb.png"])])
            assert answer.status_code == 200 and answer.json()["predictions"][0]["top_k"] == expected
            pids.add(requests.get(s.url + "/healthz", timeout=10).json()["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2 and s.proc.pid not in pids, "one process answered everything"
        # /metrics is the answering worker's: every worker has answered /healthz (both pids seen)
        assert s.metric('densenets_requests_total{method="GET",route="/healthz",status="200"}') >= 1
    finally:
        s.proc.send_signal(signal.SIGTERM)
        code = s.proc.wait(60)
    assert code == 0, "".join(s.lines)


# -- the page, in a real browser ---------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian chromium driven by selenium; CI (``CI=true``, .ci/run installs both) fails without them.

    Its profile and its temporary files (chromium leaves a ``SingletonSocket`` folder behind) go under
    pytest's temporary folder, not the machine's ``/tmp``.
    """
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        why = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    scratch = tmp_path_factory.mktemp("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1100,1300",
        "--disable-background-networking",
        "--no-first-run",
        f"--user-data-dir={scratch / 'profile'}",
    ):
        options.add_argument(flag)
    service = Service(CHROMEDRIVER, env={**os.environ, "TMPDIR": str(scratch)})
    driver = webdriver.Chrome(service=service, options=options)
    yield driver
    driver.quit()


def test_the_page_shows_the_predicted_class_its_probability_and_the_heat_map(server, browser, images, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    crafted = tmp_path / "<img src=x onerror=window.pwned=2>.png"  # a file name that is also HTML
    crafted.write_bytes(images["rgb.png"].read_bytes())
    expected = post(server, [upload(crafted)]).json()["predictions"][0]["top_k"][0]
    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    wait.until(lambda d: d.find_element(By.ID, "model-name").text == "densenet_bc16_k4")
    assert browser.find_element(By.ID, "model-backend").text == "torch"
    assert "fp32" in browser.find_element(By.ID, "model-precision").text
    browser.find_element(By.ID, "files").send_keys(str(crafted))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".result .classes li"))
    card = browser.find_element(By.CSS_SELECTOR, ".result")
    assert card.find_element(By.CSS_SELECTOR, ".filename").text == crafted.name
    first = card.find_element(By.CSS_SELECTOR, ".classes li")
    assert first.find_element(By.CSS_SELECTOR, ".label").text == expected["label"]
    assert first.find_element(By.CSS_SELECTOR, ".probability").text == f"{100 * expected['probability']:.1f}%"
    heat = card.find_element(By.CSS_SELECTOR, ".heatmap")
    wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heat))
    assert heat.is_displayed() and expected["label"] in heat.get_attribute("alt")
    options = [o.get_attribute("textContent") for o in card.find_elements(By.CSS_SELECTOR, ".explain-class option")]
    assert sorted(options) == sorted(CLASSES)  # the HTML class name is shown as text
    assert browser.execute_script("return window.pwned === undefined")
    assert "Results" in browser.find_element(By.ID, "results-heading").text
    assert browser.find_element(By.ID, "results").get_attribute("aria-live") == "polite"


def test_the_serve_bench_load_generator_measures_a_running_server(server, images):
    from densenets.bench.report import serve_table
    from densenets.bench.serve_load import _load

    row = _load(server.port, images["rgb.png"].read_bytes(), concurrency=3, total=6)
    assert (row["requests"], row["failed"]) == (6, 0)
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] and row["images_per_s"] > 0
    table = serve_table({"model": "m", "size": 32, "note": "n", "offline": {"batch": 16, "images_per_s": 100.0},
                         "rows": [{"server": "batched", "concurrency": 3, **row}]})  # fmt: skip
    assert table[-2].startswith("| batched | 3 | ") and table[-2].endswith(" | 0 |")
