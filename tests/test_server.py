"""The HTTP API: in-process with TestClient, and a real ``retrikt serve`` process over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from store_helpers import labelled_store

from retrikt.cli import main
from retrikt.errors import ModelFileError, RetriktError
from retrikt.server import create_app
from retrikt.student import RetriKT
from retrikt.tasks import TASKS, get_task

REPO = Path(__file__).resolve().parent.parent
CB = get_task("cb")
GOOD = {"premise": "It rained all day in the city.", "hypothesis": "The streets were wet."}


# A small labelled memory for the student to retrieve from (gold labels as the teacher).
MEMORY = [
    ("It rained all day in the city.", "The streets were wet.", "entailment"),
    ("It rained all day in the city.", "The streets stayed dry.", "contradiction"),
    ("It rained all day in the city.", "The mayor was at home.", "neutral"),
    ("She said she would certainly come.", "She will come.", "entailment"),
    ("She said she would never come.", "She will come.", "contradiction"),
    ("She said she might come.", "She will come.", "neutral"),
    ("The shop closed at noon.", "The shop was open in the evening.", "contradiction"),
    ("The shop closed at noon.", "The shop was closed in the evening.", "entailment"),
]


def make_student_dir(folder: Path) -> Path:
    """A real, small CB student with a store: 2-layer MiniLM, untrained head, 8 memories.

    Serving needs no skill, so the head stays untrained; the store is real (keys from the
    student's own encoder, saved and verified on load), so neighbours come back.
    """
    examples = [CB.parse_input({"premise": p, "hypothesis": h, "label": label})
                for p, h, label in MEMORY]  # fmt: skip
    store = labelled_store(CB, examples, folder / "source-store", encoder="minilm-l6:2")
    model = RetriKT.from_encoder("cb", "minilm-l6:2")
    model.attach_store(store, k=3)
    model.refresh_keys()
    return model.save_pretrained(folder / "student")


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    return make_student_dir(tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="module")
def student(student_dir):
    return RetriKT.from_pretrained(student_dir)


@pytest.fixture(scope="module")
def client(student):
    with TestClient(create_app(student, max_batch=4, max_chars=200)) as client:
        yield client


# ------------------------------------------------------------------ happy path
def test_health_and_info_describe_the_served_model(client, student):
    assert client.get("/health").json() == {"status": "ok", "task": "cb"}
    info = client.get("/info").json()
    assert info["task"] == "cb"
    assert info["labels"] == list(CB.label_names)
    assert info["fields"] == ["premise", "hypothesis"]
    assert info["limits"] == {
        "max_batch": 4,
        "max_chars": 200,
        "max_queue": 16,
        "timeout": 30.0,
        "body_timeout": 10.0,
        "batch_wait_ms": 2.0,
        "max_body_bytes": 85_760,
    }
    assert info["config"]["encoder"] == "minilm-l6:2"
    assert info["retrieval"] is True
    assert info["store_size"] == len(MEMORY)
    assert info["store_encoder"] == student.config.retrieval.store_encoder_id
    assert info["config"]["retrieval"]["k"] == 3


def test_info_of_a_student_without_retrieval():
    with TestClient(create_app(RetriKT.from_encoder("cb", "minilm-l6:2"))) as client:
        info = client.get("/info").json()
    assert (info["retrieval"], info["store_size"], info["store_encoder"]) == (False, None, None)
    assert info["config"]["retrieval"] is None


def test_predict_answers_every_input_form_like_the_python_api(client, student):
    inputs = [GOOD, [GOOD["premise"], GOOD["hypothesis"]], ["A man sleeps.", "A man runs."]]
    response = client.post("/predict", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert predictions == [p.to_dict() for p in student.predict(inputs)]
    assert predictions[0] == predictions[1]  # object and list forms are the same input
    memory_texts = {CB.render({"premise": p, "hypothesis": h}) for p, h, _ in MEMORY}
    for prediction in predictions:
        assert prediction["label"] in CB.label_names
        assert sum(prediction["probs"].values()) == pytest.approx(1.0, abs=1e-5)
        neighbours = prediction["neighbours"]
        assert len(neighbours) == 3
        assert {n["text"] for n in neighbours} <= memory_texts
        sims = [n["similarity"] for n in neighbours]
        assert sims == sorted(sims, reverse=True)
    # The memory written for exactly this input is its nearest neighbour.
    assert predictions[0]["neighbours"][0]["label"] == "entailment"
    assert predictions[0]["neighbours"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)


def test_openapi_docs_describe_the_task(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/health", "/info"} <= set(schema["paths"])
    assert "**cb**" in schema["info"]["description"]
    assert "premise" in schema["info"]["description"]
    # The example the docs offer to "Try it out" is a valid request for this task.
    (example,) = schema["components"]["schemas"]["PredictRequest"]["examples"]
    assert client.post("/predict", json=example).status_code == 200


# ------------------------------------------------------------------ bad input
def _pair(premise, hypothesis) -> dict:
    return {"premise": premise, "hypothesis": hypothesis}


# Each case: the body, the status, substrings the error must contain, indices of bad inputs.
BAD_REQUESTS = [
    pytest.param({"inputs": [GOOD, {"premise": "p"}]}, 422, ["inputs[1]", "'hypothesis'"], [1],
                 id="missing-field"),
    pytest.param({"inputs": [_pair(" ", "h")]}, 422, ["'premise' is empty"], [0], id="empty-text"),
    pytest.param({"inputs": [_pair(3, "h")]}, 422, ["'premise' must be a string, got int"], [0],
                 id="number-field"),
    pytest.param({"inputs": [_pair(None, "h")]}, 422, ["must be a string"], [0], id="null-field"),
    pytest.param({"inputs": [GOOD, 7]}, 422, ["inputs[1]", "expected an object"], [1],
                 id="number-input"),
    pytest.param({"inputs": ["only one"]}, 422, ["needs 2 text(s)", "got 1"], [0],
                 id="one-text-for-pair"),
    pytest.param({"inputs": [["a", "b", "c"]]}, 422, ["needs 2 text(s)", "got 3"], [0],
                 id="three-texts"),
    pytest.param({"inputs": [_pair("x" * 201, "h")]}, 422, ["201 characters (max 200)"], [0],
                 id="oversize-text"),
    pytest.param({"inputs": [{**GOOD, "label": "sometimes"}]}, 422, ["unknown label 'sometimes'"],
                 [0], id="bad-label"),
    pytest.param({"inputs": [{}, GOOD, "x"]}, 422, ["inputs[0]", "1 more invalid"], [0, 2],
                 id="several-bad"),
    pytest.param({"inputs": []}, 422, ["'inputs' is empty"], None, id="empty-batch"),
    pytest.param({"inputs": [GOOD] * 5}, 413, ["5 inputs", "limit of 4"], None,
                 id="oversize-batch"),
    pytest.param({"examples": [GOOD]}, 422, ["inputs: Field required", '{"inputs": [...]}'], None,
                 id="no-inputs-key"),
    pytest.param({"inputs": GOOD}, 422, ["inputs: Input should be a valid list"], None,
                 id="inputs-not-list"),
    pytest.param([GOOD], 422, ["body", "valid dictionary"], None, id="body-is-list"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "needles", "indices"), BAD_REQUESTS)
def test_bad_input_gets_a_4xx_that_says_what_is_wrong(client, body, status, needles, indices):
    response = client.post("/predict", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    for needle in needles:
        assert needle in error["error"]
    if indices is None:
        assert "errors" not in error
    else:
        assert [problem["index"] for problem in error["errors"]] == indices
    # ... and the server keeps serving.
    assert client.post("/predict", json={"inputs": [GOOD]}).status_code == 200


def test_invalid_json_is_a_400_with_the_position(client):
    response = client.post(
        "/predict", content=b'{"inputs": [', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]
    assert "at character 12" in response.json()["error"]


def test_a_lone_surrogate_is_a_422_not_a_crash(client):
    body = b'{"inputs": [{"premise": "caf\\ud800", "hypothesis": "h"}]}'
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "'premise'" in response.json()["error"]


def test_oversize_body_is_refused_unread(client):
    # Limit for max_batch=4, max_chars=200: 4 inputs x 4 fields x (6 x 200 + 64) + 64 KiB.
    huge = json.dumps({"inputs": [{"premise": "x" * 200_000, "hypothesis": "h"}]})
    response = client.post("/predict", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "larger than this server's limit of 85,760 bytes" in response.json()["error"]


def test_oversize_chunked_body_is_refused_too(client):
    def chunks():
        yield b'{"inputs": [{"premise": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'", "hypothesis": "h"}]}'

    response = client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_a_body_not_sent_as_json_is_a_415(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/predict", content=json.dumps({"inputs": [GOOD]}), headers=headers)
    assert response.status_code == 415
    assert "Content-Type: application/json" in response.json()["error"]


def test_unknown_routes_and_methods_answer_in_the_same_error_shape(client):
    assert client.get("/nope").status_code == 404
    assert client.get("/nope").json() == {"error": "Not Found"}
    assert client.get("/predict").status_code == 405
    assert client.get("/predict").json() == {"error": "Method Not Allowed"}


# ------------------------------------------------------------- a test double
@dataclass
class _Config:
    task: str = "cb"
    encoder: str = "double"
    head: str = "classification"
    max_length: int = 128
    format_version: int = 1
    retrieval: None = None


@dataclass
class _Prediction:
    label: str

    def to_dict(self) -> dict:
        return {"label": self.label}


class _DoubleStudent:
    """Follows the RetriKT contract; counts concurrent calls and can be told to crash."""

    def __init__(self, crash: bool = False, task: str = "cb"):
        self.task, self.config, self.store, self.crash = get_task(task), _Config(task), None, crash
        self.running = self.most_running = 0
        self.calls: list[int] = []  # inputs per call

    def predict(self, items, batch_size=32):
        self.calls.append(len(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            time.sleep(0.02)
            if self.crash:
                raise RuntimeError("the model broke")
            first = self.task.fields[0]
            return [_Prediction(self.task.parse_input(item)[first][:5]) for item in items]
        finally:
            self.running -= 1


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_docs_example_is_valid_for_every_task(task):
    with TestClient(create_app(_DoubleStudent(task=task))) as client:
        schema = client.get("/openapi.json").json()
        (example,) = schema["components"]["schemas"]["PredictRequest"]["examples"]
        assert client.post("/predict", json=example).status_code == 200
        assert f"**{task}**" in schema["info"]["description"]


def test_a_model_crash_is_a_500_json_and_the_server_survives():
    model = _DoubleStudent(crash=True)
    with TestClient(create_app(model), raise_server_exceptions=False) as client:
        response = client.post("/predict", json={"inputs": [GOOD]})
        assert response.status_code == 500
        assert response.json() == {"error": "internal error (RuntimeError); see the server log"}
        model.crash = False
        assert client.post("/predict", json={"inputs": [GOOD]}).json() == {
            "predictions": [{"label": "It ra"}]
        }


@pytest.mark.parametrize("inputs_per_request", [1, 3])
def test_concurrent_requests_share_batches_one_call_at_a_time(inputs_per_request):
    model = _DoubleStudent()
    app = create_app(model, max_batch=4, max_queue=32)  # room for all 8 requests

    async def burst() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                return await asyncio.gather(
                    *(
                        http.post("/predict", json={"inputs": [[f"p{i}{j}", "h"]
                                                               for j in range(inputs_per_request)]})
                        for i in range(8)
                    )
                )  # fmt: skip

    responses = asyncio.run(burst())
    for i, response in enumerate(responses):  # each request gets its own answers, in order
        labels = [p["label"] for p in response.json()["predictions"]]
        assert labels == [f"p{i}{j}" for j in range(inputs_per_request)]
    assert model.most_running == 1  # one model call at a time
    assert sum(model.calls) == 8 * inputs_per_request
    assert max(model.calls) <= 4  # batches respect max_batch ...
    if inputs_per_request == 1:
        assert len(model.calls) < 8  # ... and waiting requests were served together
    else:
        assert model.calls == [3] * 8  # two requests of 3 would exceed 4: never merged


def _concurrently(app, bodies: list[dict]) -> tuple[list[httpx.Response], dict]:
    """Send ``bodies`` to ``app`` at once; the responses, then ``GET /metrics``."""

    async def burst() -> tuple[list[httpx.Response], dict]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                responses = await asyncio.gather(*(http.post("/predict", json=b) for b in bodies))
                return list(responses), (await http.get("/metrics")).json()

    return asyncio.run(burst())


def test_requests_sent_together_are_batched_and_answered_individually(student):
    items = [{"premise": premise, "hypothesis": hypothesis} for premise, hypothesis, _ in MEMORY]
    alone = [student.predict([item])[0].to_dict() for item in items]
    # A wait far longer than sending six requests takes: they all join the first one's batch.
    app = create_app(student, max_batch=16, batch_wait_ms=500)
    responses, metrics = _concurrently(app, [{"inputs": [item]} for item in items[:6]])
    for response, expected in zip(responses, alone, strict=False):
        (got,) = response.json()["predictions"]
        assert got["label"] == expected["label"]
        assert got["probs"] == pytest.approx(expected["probs"], abs=1e-5)
        assert [n["text"] for n in got["neighbours"]] == [n["text"] for n in expected["neighbours"]]
    assert metrics["requests"] == 6 and metrics["inputs"] == 6
    assert metrics["largest_batch"] > 1 and metrics["model_calls"] < 6


def test_batches_gathered_during_the_wait_respect_max_batch():
    model = _DoubleStudent()
    app = create_app(model, max_batch=4, max_queue=16, batch_wait_ms=300)
    bodies = [{"inputs": [[f"p{i}", "h"], [f"q{i}", "h"]]} for i in range(4)]
    responses, metrics = _concurrently(app, bodies)
    for i, response in enumerate(responses):
        assert [p["label"] for p in response.json()["predictions"]] == [f"p{i}", f"q{i}"]
    assert metrics["batch_sizes"] == {"4": 2}  # two requests per call, never more than 4
    assert model.calls == [4, 4]


def test_batch_wait_must_be_a_sane_number_of_milliseconds():
    with pytest.raises(RetriktError, match="--batch-wait-ms"):
        create_app(_DoubleStudent(), batch_wait_ms=-1)


def test_a_folder_is_loaded_at_startup(student_dir):
    with TestClient(create_app(student_dir)) as client:
        assert client.get("/info").json()["task"] == "cb"
        assert client.post("/predict", json={"inputs": [GOOD]}).status_code == 200


def test_a_bad_folder_fails_at_startup(tmp_path):
    with (
        pytest.raises(ModelFileError, match="not a RetriKT student folder"),
        TestClient(create_app(tmp_path)),
    ):
        pass


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--max-batch", "0", "--max-batch must be at least 1, got 0"),
        ("--max-chars", "0", "--max-chars must be between 1 and 20000"),
        ("--max-chars", "20001", "--max-chars must be between 1 and 20000"),
        ("--port", "70000", "--port 70000 is not a TCP port"),
    ],
)
def test_serve_refuses_impossible_limits(student_dir, caplog, option, value, needle):
    assert main(["serve", "--model", str(student_dir), option, value]) == 1
    assert needle in caplog.text


# --------------------------------------------------------- a real HTTP server
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(*args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "retrikt", "serve", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def server(student_dir):
    """``retrikt serve`` on a free port, waited for through /health, stopped at the end."""
    port = _free_port()
    proc = _serve("--model", str(student_dir), "--port", str(port), "--max-batch", "8")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"retrikt serve exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("retrikt serve did not answer /health within 180 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_real_server_predicts_over_http(server, student):
    with httpx.Client(base_url=server, timeout=30) as http:
        assert http.get("/health").json()["status"] == "ok"
        assert http.get("/info").json()["limits"]["max_batch"] == 8
        response = http.post("/predict", json={"inputs": [GOOD, ["A cat.", "A dog."]]})
        assert response.status_code == 200
        expected = [p.to_dict() for p in student.predict([GOOD, ["A cat.", "A dog."]])]
        got = response.json()["predictions"]
        assert [p["label"] for p in got] == [p["label"] for p in expected]
        for g, e in zip(got, expected, strict=True):
            assert g["probs"] == pytest.approx(e["probs"], abs=1e-5)
        assert http.get("/docs").status_code == 200


def test_real_server_rejects_bad_input_and_keeps_serving(server):
    with httpx.Client(base_url=server, timeout=30) as http:
        bad = http.post("/predict", json={"inputs": [GOOD, {"premise": "p", "hypothesis": ""}]})
        assert bad.status_code == 422
        assert bad.json()["errors"] == [
            {"index": 1, "message": "inputs[1]: field 'hypothesis' is empty"}
        ]
        raw = http.post(
            "/predict", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert raw.status_code == 400
        assert http.post("/predict", json={"inputs": [GOOD] * 9}).status_code == 413
        assert http.post("/predict", json={"inputs": [GOOD]}).status_code == 200


def test_real_server_answers_concurrent_clients(server):
    texts = [[f"Sentence number {i} is here.", "It is a sentence."] for i in range(8)]

    def ask(i: int) -> list[dict]:
        with httpx.Client(base_url=server, timeout=60) as http:
            return [http.post("/predict", json={"inputs": [texts[i]]}).json() for _ in range(3)]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    with httpx.Client(base_url=server, timeout=60) as http:
        alone = http.post("/predict", json={"inputs": texts}).json()["predictions"]
    for i, repeats in enumerate(answers):
        for answer in repeats:
            (prediction,) = answer["predictions"]
            assert prediction["label"] == alone[i]["label"]
            assert prediction["probs"] == pytest.approx(alone[i]["probs"], abs=1e-5)


def test_serve_with_a_bad_folder_exits_1_with_one_line(tmp_path, caplog):
    assert main(["serve", "--model", str(tmp_path), "--port", str(_free_port())]) == 1
    assert "is not a RetriKT student folder" in caplog.text


def test_serve_on_a_taken_port_exits_1_and_says_so(student_dir, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(student_dir), "--port", str(port)]) == 1
    assert f"could not serve on 127.0.0.1:{port}" in caplog.text
    assert "address already in use" in caplog.text.lower()
