"""Shared fixtures: offline environment, one Prefect test server per session, toy data.

Toy batches are built so a tiny 2-layer BERT can learn them in seconds: each label has
its own keyword, surrounded by filler words shared by every label.
"""

from __future__ import annotations

from flows.cli import offline_env  # imports neither Prefect nor transformers

offline_env()  # before anything imports Prefect or transformers

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FILLER = "the a my please can you i want to about for with this that is it".split()
KEYWORDS = {
    "weather": "rain", "music": "guitar", "food": "pizza", "travel": "flight",
    "bank": "money", "sport": "football", "health": "doctor", "car": "engine",
}


def toy_frame(labels: list[str], *, per_label: int = 30, seed: int = 0, slice_name: str | None = None,
              test_share: float = 0.3) -> pd.DataFrame:
    """Rows `text,label[,slice],split` where each label's keyword decides the label."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in labels:
        keyword = KEYWORDS[label]
        for i in range(per_label):
            words = list(rng.choice(FILLER, size=int(rng.integers(3, 8))))
            words.insert(int(rng.integers(0, len(words) + 1)), keyword)
            split = "test" if i < per_label * test_share else "train"
            rows.append({"text": " ".join(words) + f" {i}", "label": label, "split": split})
    frame = pd.DataFrame(rows)
    if slice_name:
        frame.insert(2, "slice", slice_name)
    return frame


@pytest.fixture
def toy():
    return toy_frame


TINY_PARAMS = """\
model: {base: tiny, max_length: 32}
validate: {min_rows: 5}
replay: {capacity: 200, ratio: 1.0}
train: {epochs: 20, batch_size: 16, lr: 2.0e-3, warmup_ratio: 0.0, seed: 7, precision: fp32}
gate: {tolerance: 0.2, min_new_slice_score: 0.5, min_slice_size: 10, n_resamples: 500}
"""


@pytest.fixture
def workspace(tmp_path) -> Path:
    """An empty workspace with params for the tiny model."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(TINY_PARAMS)
    return ws


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for the whole test session (it takes 5-10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def prefect_api_url(prefect_server) -> str:
    """The API URL of the session's Prefect server, for child processes to share it."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="module")
def one_torch_thread():
    """On a shared 2-core box, torch's OpenMP pool contending with another process runs
    ~100x slower; one thread keeps the tiny model fast."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (a free port) for the whole session, reached over
    real HTTP through the standard AWS environment variables, as production would be."""
    import os

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    yield endpoint
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh, empty bucket per test; returns its name."""
    import re
    import uuid

    from tasks.core.storage import s3_client

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    s3_client().create_bucket(Bucket=name)
    return name


ENTITIES = {
    "PER": [["alice"], ["bob", "smith"], ["carol"], ["dave", "jones"]],
    "LOC": [["paris"], ["new", "york"], ["london"], ["berlin"]],
    "ORG": [["acme"], ["globex", "corp"], ["initech"], ["umbrella"]],
    "MISC": [["olympics"], ["euro"], ["nobel", "prize"], ["oscar"]],
}


def flow_workspace(tmp_path_factory, name: str, params: str | None = None) -> tuple[Path, Path]:
    """(root, workspace) for a module-scoped flow test: the workspace holds `params`
    (TINY_PARAMS by default); batches go under root, beside it."""
    root = tmp_path_factory.mktemp(name)
    ws = root / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(TINY_PARAMS if params is None else params)
    return root, ws


def tiny_version(reg, tmp: Path, seed: int, labels: tuple[str, ...] = ("weather", "music", "food")) -> str:
    """A tiny classifier with its own seeded random head, registered as the next version
    of `reg` (a served or exported model that never went through the flow)."""
    from tasks.train.model import load_base, save_classifier

    out = save_classifier(load_base("tiny", list(labels), seed=seed), tmp / f"candidate-{seed}")
    return reg.register(out, {"task": "classification", "pipeline_tag": "text-classification", "batch_id": f"b{seed}",
                              "metrics": {"overall": {"accuracy": 0.5 + seed / 100}, "slices": {"A": {"accuracy": 0.5}}},
                              "gate": {"passed": True, "reasons": ["test"]}})


def ner_workspace(tmp_path_factory, name: str) -> tuple[Path, Path]:
    """(root, workspace) for a `task.type: ner` flow test: the workspace holds TINY_NER_PARAMS."""
    return flow_workspace(tmp_path_factory, name, TINY_NER_PARAMS)


def toy_ner_frame(types: list[str], *, sentences: int = 40, seed: int = 0, slice_name: str | None = None,
                  test_share: float = 0.3) -> pd.DataFrame:
    """Sentences `tokens,tags[,slice],split` (IOB2): filler words and one or two entity
    mentions of `types`; each entity type has its own few names, so a tiny BERT learns
    them in seconds."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(sentences):
        tokens = list(rng.choice(FILLER, size=int(rng.integers(2, 6))))
        tags = ["O"] * len(tokens)
        for _ in range(int(rng.integers(1, 3))):
            kind = types[int(rng.integers(0, len(types)))]
            name = ENTITIES[kind][int(rng.integers(0, len(ENTITIES[kind])))]
            at = int(rng.integers(0, len(tokens) + 1))
            if at < len(tokens) and tags[at].startswith("I-"):  # never split an entity
                at = len(tokens)
            tokens[at:at] = name
            tags[at:at] = [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
        tokens.append(str(i % 10))  # digits seen in training too: an unseen token is a toy artefact
        tags.append("O")
        rows.append({"tokens": tokens, "tags": tags, "split": "test" if i < sentences * test_share else "train"})
    frame = pd.DataFrame(rows)
    if slice_name:
        frame.insert(2, "slice", slice_name)
    return frame


TINY_NER_PARAMS = TINY_PARAMS + """\
task: {type: ner}
ner: {min_sentences: 5}
"""
