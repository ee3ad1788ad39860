"""What the server does per request besides the forward pass (issue 28, concurrency 16): uploads
are decoded on one dedicated thread, OpenVINO compiles once for every batch size, answers rank
only the classes the API can ask for. The servers run in this process (uvicorn in a thread)."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")

from densenets.deploy import choice  # noqa: E402
from densenets.models import create_model  # noqa: E402
from densenets.serve.app import create_app  # noqa: E402
from densenets.serve.config import ServeConfig  # noqa: E402
from densenets.serve.decoding import THREAD_NAME, Decoder  # noqa: E402
from densenets.serve.model import load_served  # noqa: E402

needs_openvino = pytest.mark.skipif(not choice.installed("openvino"), reason="openvino is not installed")


def test_the_decoder_runs_every_job_on_its_one_thread_in_order():
    decoder = Decoder()
    seen = []

    def job(i):
        seen.append((i, threading.current_thread().name))
        return i * i

    async def many():
        return await asyncio.gather(*(decoder.run(job, i) for i in range(12)))

    assert asyncio.run(many()) == [i * i for i in range(12)]
    decoder.stop()
    assert [i for i, _ in seen] == list(range(12))
    assert {name for _, name in seen} == {f"{THREAD_NAME}_0"}


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


class InProcessServer:
    """``create_app(config, served)`` under uvicorn on a free loopback port, in a thread."""

    def __init__(self, served) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = ServeConfig(source="unused", port=port, max_wait_ms=50, batch_wait="window")
        self.server = uvicorn.Server(uvicorn.Config(create_app(config, served), port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:  # ends when uvicorn listens, or the thread died
            assert self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_concurrent_uploads_are_decoded_on_the_one_decoding_thread():
    decoded_on = []

    def decode(data, max_pixels):
        decoded_on.append(threading.current_thread().name)
        time.sleep(0.02)  # long enough for the requests to overlap: a pool would take a thread each
        return torch.zeros(3, 2, 2)

    served = SimpleNamespace(name="fake", backend="torch", precision="fp32", precision_note="fp32 (exact)",
                             decode=decode, predict=lambda batch: [{"predictions": []}] * len(batch))  # fmt: skip
    server = InProcessServer(served)
    try:

        def ask(i: int) -> int:
            answer = requests.post(server.url + "/v1/predict", files=[("file", (f"{i}.png", _png()))], timeout=60)
            return answer.status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(ask, range(8)))
    finally:
        server.stop()
    assert statuses == [200] * 8
    assert decoded_on == [f"{THREAD_NAME}_0"] * 8


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("served") / "bc16.pth"
    torch.manual_seed(0)
    torch.save(create_model("densenet_bc16_k4", num_classes=10).state_dict(), path)
    return path


def test_answers_rank_only_the_classes_the_api_can_ask_for(weights):
    served = load_served(ServeConfig(source=str(weights), model_name="densenet_bc16_k4", backend="torch", max_top_k=3))
    everything = load_served(ServeConfig(source=str(weights), model_name="densenet_bc16_k4", backend="torch"))
    batch = torch.randn(2, 3, 32, 32)
    short, full = served.predict(batch), everything.predict(batch)
    assert [len(a["predictions"]) for a in short] == [3, 3]
    assert [len(a["predictions"]) for a in full] == [10, 10]  # max_top_k 100 > 10 classes: all of them
    assert [a["predictions"] for a in short] == [a["predictions"][:3] for a in full]


@needs_openvino
def test_openvino_is_compiled_once_at_load_for_every_batch_size(weights):
    served = load_served(ServeConfig(source=str(weights), model_name="densenet_bc16_k4", backend="openvino"))
    module = served.loaded.model
    assert list(module.compiled) == [(-1, 3, 32, 32)], "not compiled at load, or not for any batch size"
    assert any("compiled once" in note for note in served.notes)
    batches = [torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n)) for n in (1, 3, 2)]
    answers = [served.predict(b) for b in batches]
    assert list(module.compiled) == [(-1, 3, 32, 32)], "a new batch size compiled again"
    module.dynamic_batch = False  # the static compile predict uses: the same answers
    for batch, answer in zip(batches, answers, strict=True):
        static = served.predict(batch)
        for a, s in zip(answer, static, strict=True):
            assert [p["index"] for p in a["predictions"]] == [p["index"] for p in s["predictions"]]
            for p, q in zip(a["predictions"], s["predictions"], strict=True):
                assert abs(p["probability"] - q["probability"]) <= 1e-5
    assert len(module.compiled) == 4  # one dynamic, three static shapes
