"""Fuzzing every reader of a user's file or folder (issue 18): whatever the bytes, the answer is
a clear ``RetriktError`` (a non-zero exit in the CLI) or a 4xx, never a traceback.

Readers covered: SuperGLUE JSONL and GLUE TSV splits, ``predict`` input lines, knowledge
store folders and HTTP bodies (student folders: tests/test_predict_cli.py). Hypothesis runs
derandomized so that CI sees the same cases every time.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_server import _DoubleStudent
from test_store import new_store

from retrikt.cli.predict import _parse_lines
from retrikt.errors import DataError, StoreError
from retrikt.server import create_app
from retrikt.store import KnowledgeStore
from retrikt.store.manifest import manifest_digest
from retrikt.tasks import get_task

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["premise", "hypothesis", "label", "idx", "passage", "target", "question", "answers"]
records = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), json_values, max_size=6)
jsonl_lines = st.one_of(
    st.binary(max_size=40),
    records.map(lambda r: json.dumps(r).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
)


def _read(task: str, relative: str, content: bytes, split: str = "train") -> None:
    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / relative
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
        try:
            examples = get_task(task).read(split, root)
        except DataError:
            return
        assert examples and all(isinstance(e, dict) for e in examples)


@FUZZ
@given(
    task=st.sampled_from(["cb", "copa", "wsc", "multirc"]), lines=st.lists(jsonl_lines, max_size=4)
)
def test_jsonl_reader_answers_every_file_with_examples_or_a_data_error(task, lines):
    folder = {"cb": "CB", "copa": "COPA", "wsc": "WSC", "multirc": "MultiRC"}[task]
    _read(task, f"superglue/{folder}/train.jsonl", b"\n".join(lines))


tsv_cells = st.text(alphabet=st.characters(exclude_characters="\t\n\r"), max_size=8)
tsv_rows = st.lists(st.lists(tsv_cells, max_size=6).map("\t".join), max_size=5)


@FUZZ
@given(
    task=st.sampled_from(["mrpc", "cola", "stsb"]),
    rows=tsv_rows,
    header=st.booleans(),
    junk=st.binary(max_size=12),
)
def test_tsv_reader_answers_every_file_with_examples_or_a_data_error(task, rows, header, junk):
    folder = {"mrpc": "MRPC", "cola": "CoLA", "stsb": "STS-B"}[task]
    heads = {"mrpc": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "cola": "",
             "stsb": "index\tsentence1\tsentence2\tscore"}  # fmt: skip
    text = "\n".join(([heads[task]] if header else []) + rows).encode() + junk
    _read(task, f"glue/{folder}/train.tsv", text)


@FUZZ
@given(lines=st.lists(st.one_of(json_values.map(json.dumps), st.text(max_size=30)), max_size=6))
def test_predict_lines_are_examples_or_data_errors(lines):
    for task in (get_task("cb"), get_task("copa"), get_task("cola")):
        parsed = list(_parse_lines(iter(lines), "stdin", task))
        assert [n for n, _ in parsed] == [n for n, line in enumerate(lines, 1) if line.strip()]
        for number, item in parsed:
            assert isinstance(number, int)
            if isinstance(item, DataError):
                assert str(item).startswith(f"stdin:{number}: ")
            else:
                assert all(isinstance(item[f], str) and item[f].strip() for f in task.fields)


def test_a_deeply_nested_predict_line_is_a_data_error():
    ((_, item),) = _parse_lines(iter(["[" * 100_000]), "in.jsonl", get_task("cb"))
    assert isinstance(item, DataError) and "nested too deeply" in str(item)


# ------------------------------------------------------------------ store folders
MANIFEST_KEYS = ["format", "format_version", "store_id", "version", "task", "label_names",
                 "encoder", "entry_count", "index", "sources", "writer", "data", "files",
                 "reindexed_from", "created", "generator"]  # fmt: skip


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(MANIFEST_KEYS), st.one_of(st.just("<delete>"), json_values)),
        min_size=1,
        max_size=3,
    ),
    flip=st.none()
    | st.tuples(
        st.sampled_from(["entries.parquet", "vectors.npy", "index.faiss"]), st.integers(0, 10_000)
    ),  # fmt: skip
)
def test_a_damaged_store_is_refused_with_a_store_error(tmp_path_factory, edits, flip):
    path = tmp_path_factory.mktemp("fuzzstore") / "s"
    new_store(path, n=4)
    manifest = json.loads((path / "manifest.json").read_text())
    if flip is not None:
        name, offset = flip
        target = path / manifest["data"] / name
        data = bytearray(target.read_bytes())
        data[offset % len(data)] ^= 0x5A
        target.write_bytes(bytes(data))
    for key, value in edits:
        if value == "<delete>":
            manifest.pop(key, None)
        else:
            manifest[key] = value
    manifest["manifest_sha256"] = manifest_digest(manifest)  # as an attacker would
    (path / "manifest.json").write_text(json.dumps(manifest))
    try:
        store = KnowledgeStore.open(path)
        store.verify()
    except StoreError:
        return
    assert len(store) == 4  # only edits that keep the store valid get here


# ------------------------------------------------------------------ HTTP bodies
app = create_app(_DoubleStudent(), max_batch=4, max_chars=50)


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=60),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.lists(json_values, max_size=5).map(lambda v: json.dumps({"inputs": v}).encode()),
        st.lists(records, max_size=5).map(lambda v: json.dumps({"inputs": v}).encode()),
    ),
    content_type=st.sampled_from(["application/json", "text/plain"]),
)
def test_any_http_body_gets_a_200_or_a_4xx_with_an_error_message(body, content_type):
    with TestClient(app) as client:
        response = client.post("/predict", content=body, headers={"content-type": content_type})
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    if response.status_code != 200:
        assert response.json()["error"]
