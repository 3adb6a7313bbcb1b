"""Registry: immutable numbered versions, aliases that never point at a missing version,
a production symlink, promotion only of a version that loads and is intact, a history of
every alias move, and a model card in every version."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.train.model import load_base, load_classifier, save_classifier
from tasks.kinds import CLASSIFICATION
from tasks.registry.store import Registry, RegistryError, register_and_promote


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A real (untrained) tiny classifier saved as a candidate directory."""
    path = tmp_path_factory.mktemp("candidate") / "model"
    save_classifier(load_base("tiny", ["weather", "music"], seed=0), path)
    return path


def fake_candidate(root, tag: str):
    """A candidate-shaped directory (weights file + a payload) without a real model."""
    path = root / f"cand-{tag}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(hashlib.sha256(tag.encode()).digest() * 4)
    (path / "payload.txt").write_text(tag)
    (path / "sub").mkdir()
    (path / "sub" / "nested.txt").write_text(tag * 2)
    return path


def digest(path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def check_invariants(reg: Registry) -> None:
    """What must hold after any sequence of registry operations."""
    versions = reg.versions()
    for alias, version in reg.aliases().items():
        assert version in versions, f"alias {alias} -> missing {version}"
        assert (reg.versions_dir / version / "metadata.json").exists()
    link = reg.root / "production"
    if reg.resolve("production"):
        assert link.is_symlink()
        assert link.resolve() == (reg.versions_dir / reg.resolve("production")).resolve()
    if reg.versions_dir.exists():
        assert not [p for p in reg.versions_dir.iterdir() if p.name.startswith(".staging-")]
    if reg.root.exists():
        assert not [p for p in reg.root.iterdir() if p.name.startswith((".aliases.json.", ".production.tmp"))]
    for version in versions:
        assert reg.metadata(version)["version"] == version
        assert reg.verify(version) == [], version


# --- versions -------------------------------------------------------------------------

def test_empty_registry(tmp_path):
    reg = Registry(tmp_path / "models")
    assert reg.versions() == [] and reg.aliases() == {} and reg.resolve("production") is None
    with pytest.raises(RegistryError, match="v0001"):
        reg.path("v0001")
    assert not (tmp_path / "models").exists()  # reading never creates


def test_register_numbers_versions_and_copies(tmp_path):
    reg = Registry(tmp_path / "models")
    a, b = fake_candidate(tmp_path, "a"), fake_candidate(tmp_path, "b")
    assert reg.register(a, {"batch_ids": ["b-1"]}) == "v0001"
    assert reg.register(b, {"batch_ids": ["b-2"], "parent": "v0001"}) == "v0002"
    assert reg.versions() == ["v0001", "v0002"]
    assert (reg.path("v0001") / "payload.txt").read_text() == "a"
    assert (reg.path("v0002") / "sub" / "nested.txt").read_text() == "bb"
    meta = reg.metadata("v0002")
    assert meta["version"] == "v0002" and meta["parent"] == "v0001" and meta["batch_ids"] == ["b-2"]
    # the candidate directory is copied, not moved
    assert (a / "payload.txt").exists() and not (a / "metadata.json").exists()
    check_invariants(reg)


def test_metadata_version_cannot_be_spoofed(tmp_path):
    reg = Registry(tmp_path / "models")
    version = reg.register(fake_candidate(tmp_path, "a"), {"version": "v9999", "when": tmp_path})
    meta = reg.metadata(version)
    assert meta["version"] == version == "v0001"
    assert meta["when"] == str(tmp_path)  # non-JSON values are stringified


def test_register_never_overwrites(tmp_path):
    """Invariant: once written, a version's files never change, whatever comes after."""
    reg = Registry(tmp_path / "models")
    snapshots = {}
    for i in range(6):
        version = reg.register(fake_candidate(tmp_path, f"c{i}"), {"i": i})
        assert version == f"v{i + 1:04d}"
        snapshots[version] = digest(reg.path(version))
        if i % 2:
            reg.promote(version)
        for earlier, snap in snapshots.items():
            assert digest(reg.path(earlier)) == snap, earlier
    check_invariants(reg)


def test_register_continues_after_highest_version(tmp_path):
    reg = Registry(tmp_path / "models")
    reg.register(fake_candidate(tmp_path, "a"), {})
    (reg.versions_dir / "v0001").rename(reg.versions_dir / "v0041")  # e.g. older ones pruned
    assert reg.register(fake_candidate(tmp_path, "b"), {}) == "v0042"


def test_register_leaves_no_staging(tmp_path):
    reg = Registry(tmp_path / "models")
    for i in range(3):
        reg.register(fake_candidate(tmp_path, str(i)), {})
    assert sorted(p.name for p in reg.versions_dir.iterdir()) == ["v0001", "v0002", "v0003"]


@pytest.mark.reliability
def test_failed_register_leaves_no_staging(tmp_path):
    reg = Registry(tmp_path / "models")
    broken = tmp_path / "broken"
    broken.mkdir()  # no model.safetensors
    with pytest.raises(Exception):
        reg.register(broken, {})
    assert reg.versions() == []
    assert not [p for p in reg.versions_dir.iterdir() if p.name.startswith(".staging-")]


# --- aliases --------------------------------------------------------------------------

def test_set_alias_refuses_missing_version(tmp_path):
    reg = Registry(tmp_path / "models")
    with pytest.raises(RegistryError):
        reg.set_alias("production", "v0001")
    assert not reg.aliases_path.exists()

    reg.register(fake_candidate(tmp_path, "a"), {})
    reg.set_alias("production", "v0001")
    before = reg.aliases_path.read_bytes()
    for bad in ("v0002", "v0000", "../v0001", ""):
        with pytest.raises(RegistryError):
            reg.set_alias("production", bad)
        with pytest.raises(RegistryError):
            reg.promote(bad)
    assert reg.aliases_path.read_bytes() == before
    assert (reg.root / "production").resolve() == reg.path("v0001").resolve()


@pytest.mark.reliability
def test_set_alias_refuses_half_written_version(tmp_path):
    """A directory without metadata.json (a crash mid-copy) is not a version to point at."""
    reg = Registry(tmp_path / "models")
    (reg.versions_dir / "v0001").mkdir(parents=True)
    with pytest.raises(RegistryError):
        reg.set_alias("staging", "v0001")


def test_promote_moves_previous_and_links_production(tmp_path):
    reg = Registry(tmp_path / "models")
    for tag in "abc":
        reg.register(fake_candidate(tmp_path, tag), {})
    reg.promote("v0001")
    assert reg.aliases() == {"production": "v0001"}
    reg.promote("v0002")
    assert reg.aliases() == {"production": "v0002", "previous": "v0001"}
    reg.promote("v0002")  # re-promoting is a no-op, not previous == production
    assert reg.aliases() == {"production": "v0002", "previous": "v0001"}
    reg.promote("v0003")
    assert reg.aliases() == {"production": "v0003", "previous": "v0002"}
    # rollback = move the alias back
    reg.promote(reg.resolve("previous"))
    assert reg.aliases() == {"production": "v0002", "previous": "v0003"}
    link = reg.root / "production"
    assert link.is_symlink() and link.resolve() == reg.path("v0002").resolve()
    assert (link / "payload.txt").read_text() == "b"
    check_invariants(reg)


def test_other_aliases_do_not_move_production(tmp_path):
    reg = Registry(tmp_path / "models")
    for tag in "ab":
        reg.register(fake_candidate(tmp_path, tag), {})
    reg.promote("v0001")
    reg.set_alias("canary", "v0002")
    assert reg.resolve("production") == "v0001" and reg.resolve("canary") == "v0002"
    assert (reg.root / "production").resolve() == reg.path("v0001").resolve()


def test_production_link_is_relative(tmp_path):
    """The registry folder can be moved or mounted elsewhere and the link still works."""
    reg = Registry(tmp_path / "models")
    reg.register(fake_candidate(tmp_path, "a"), {})
    reg.promote("v0001")
    moved = Registry(tmp_path / "elsewhere")
    shutil.move(str(reg.root), str(moved.root))
    assert (moved.root / "production" / "payload.txt").read_text() == "a"
    check_invariants(moved)


@pytest.mark.reliability
def test_aliases_never_name_missing_version_under_random_operations(tmp_path):
    rng = np.random.default_rng(2024)
    reg = Registry(tmp_path / "models")
    made = 0
    for step in range(120):
        op = rng.choice(["register", "set_alias", "promote", "bogus"], p=[0.25, 0.3, 0.3, 0.15])
        aliases_before = reg.aliases_path.read_bytes() if reg.aliases_path.exists() else None
        # a version that may or may not exist: off the end some of the time
        target = f"v{int(rng.integers(1, made + 3)):04d}"
        alias = str(rng.choice(["production", "previous", "staging", "canary"]))
        try:
            if op == "register":
                made += 1
                assert reg.register(fake_candidate(tmp_path / "c", str(step)), {"step": step}) == f"v{made:04d}"
            elif op == "set_alias":
                reg.set_alias(alias, target)
            elif op == "promote":
                reg.promote(target)
            else:
                reg.set_alias(alias, f"v{made + 1 + int(rng.integers(0, 5)):04d}")
        except RegistryError:
            assert target not in reg.versions() or op == "bogus"
            after = reg.aliases_path.read_bytes() if reg.aliases_path.exists() else None
            assert after == aliases_before, "a refused move changed aliases.json"
        check_invariants(reg)
    assert made > 10 and reg.resolve("production") is not None


def test_aliases_json_is_plain_sorted_json(tmp_path):
    reg = Registry(tmp_path / "models")
    for tag in "ab":
        reg.register(fake_candidate(tmp_path, tag), {})
    reg.promote("v0001")
    reg.promote("v0002")
    assert list(json.loads(reg.aliases_path.read_text())) == ["previous", "production"]


# --- register_and_promote -------------------------------------------------------------

def test_register_and_promote_makes_loadable_production(tmp_path, model_dir):
    reg = Registry(tmp_path / "models")
    v1 = register_and_promote(reg, model_dir, {"parent": None}, works=CLASSIFICATION.works)
    v2 = register_and_promote(reg, model_dir, {"parent": v1}, works=CLASSIFICATION.works)
    assert (v1, v2) == ("v0001", "v0002")
    assert reg.aliases() == {"production": "v0002", "previous": "v0001"}
    clf = load_classifier(reg.root / "production")
    assert clf.labels == ["weather", "music"]
    enc = clf.tokenizer(["rain today"], return_tensors="pt")
    with torch.inference_mode():
        assert clf.model(**enc).logits.shape == (1, 2)
    assert reg.metadata(v2)["parent"] == "v0001"
    check_invariants(reg)


@pytest.mark.reliability
def test_register_and_promote_never_points_at_a_broken_version(tmp_path, model_dir):
    reg = Registry(tmp_path / "models")
    good = register_and_promote(reg, model_dir, {}, works=CLASSIFICATION.works)
    before = reg.aliases_path.read_bytes()
    broken = fake_candidate(tmp_path, "broken")  # right files, garbage weights
    shutil.copy(model_dir / "config.json", broken / "config.json")
    with pytest.raises(Exception):
        register_and_promote(reg, broken, {}, works=CLASSIFICATION.works)
    assert reg.resolve("production") == good
    assert reg.aliases_path.read_bytes() == before
    assert (reg.root / "production").resolve() == reg.path(good).resolve()
    check_invariants(reg)


# --- integrity ------------------------------------------------------------------------

def flip_byte(path, at: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_register_records_every_file_hash(tmp_path):
    reg = Registry(tmp_path / "models")
    version = reg.register(fake_candidate(tmp_path, "a"), {})
    meta = reg.metadata(version)
    on_disk = digest(reg.path(version))
    del on_disk["metadata.json"]
    assert meta["files"] == on_disk
    assert set(meta["files"]) == {"model.safetensors", "payload.txt", "sub/nested.txt", "README.md"}
    assert meta["weights_sha256"] == meta["files"]["model.safetensors"]
    assert meta["file_sizes"]["payload.txt"] == 1
    assert reg.verify(version) == [] and reg.checked_path(version) == reg.path(version)


@pytest.mark.parametrize("damage,expected", [
    (flip_byte, "hash mismatch: model.safetensors"),
    (lambda p: p.write_bytes(p.read_bytes()[:50]), "truncated: model.safetensors"),
    (lambda p: p.unlink(), "missing file: model.safetensors"),
])
@pytest.mark.reliability
def test_damaged_weights_are_refused_naming_the_file(tmp_path, damage, expected):
    reg = Registry(tmp_path / "models")
    for tag in "ab":
        reg.register(fake_candidate(tmp_path, tag), {})
    reg.promote("v0001")
    damage(reg.path("v0002") / "model.safetensors")
    problems = reg.verify("v0002")
    assert len(problems) == 1 and problems[0].startswith(expected), problems
    with pytest.raises(RegistryError, match="v0002.*model.safetensors"):
        reg.checked_path("v0002")
    before = reg.aliases_path.read_bytes()
    with pytest.raises(RegistryError, match="model.safetensors"):
        reg.promote("v0002")
    assert reg.aliases_path.read_bytes() == before and reg.history()[-1]["to"] == "v0001"
    assert reg.verify("v0001") == []


@pytest.mark.reliability
def test_changed_or_added_other_files_are_problems_too(tmp_path):
    reg = Registry(tmp_path / "models")
    version = reg.register(fake_candidate(tmp_path, "a"), {})
    (reg.path(version) / "sub" / "nested.txt").write_text("xx")  # same size, other bytes
    (reg.path(version) / "adapter.bin").write_bytes(b"surprise")
    problems = reg.verify(version)
    assert any(p.startswith("hash mismatch: sub/nested.txt") for p in problems), problems
    assert any(p.startswith("unexpected file: adapter.bin") for p in problems), problems


def test_versions_without_a_manifest_check_only_the_weights_hash(tmp_path):
    reg = Registry(tmp_path / "models")
    version = reg.register(fake_candidate(tmp_path, "a"), {})
    meta_path = reg.path(version) / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["files"], meta["file_sizes"]
    meta_path.write_text(json.dumps(meta))
    (reg.path(version) / "payload.txt").write_text("changed")  # not recorded, so not checked
    assert reg.verify(version) == []
    flip_byte(reg.path(version) / "model.safetensors")
    assert reg.verify(version)[0].startswith("hash mismatch: model.safetensors")
    del meta["weights_sha256"]
    meta_path.write_text(json.dumps(meta))
    assert reg.verify(version) == []  # nothing recorded, nothing to hold it to


@pytest.mark.reliability
def test_register_and_promote_refuses_a_copy_damaged_after_registration(tmp_path, model_dir, monkeypatch):
    reg = Registry(tmp_path / "models")
    good = register_and_promote(reg, model_dir, {}, works=CLASSIFICATION.works)
    register = Registry.register

    def register_then_damage(self, candidate_dir, metadata):
        version = register(self, candidate_dir, metadata)
        flip_byte(self.versions_dir / version / "model.safetensors", at=1000)
        return version

    monkeypatch.setattr(Registry, "register", register_then_damage)
    with pytest.raises(RegistryError, match="model.safetensors"):
        register_and_promote(reg, model_dir, {}, works=CLASSIFICATION.works)
    assert reg.resolve("production") == good


# --- history and rollback -------------------------------------------------------------

def test_every_alias_move_is_recorded_with_reason_and_who(tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    reg = Registry(tmp_path / "models")
    for tag in "abc":
        reg.register(fake_candidate(tmp_path, tag), {})
    reg.promote("v0001", reason="first")
    reg.promote("v0001", reason="again")  # nothing moves, nothing recorded
    reg.promote("v0002")
    monkeypatch.delenv("USER")
    assert reg.rollback(reason="v0002 misbehaves") == "v0001"
    moves = [(h["alias"], h["from"], h["to"], h["reason"], h["who"]) for h in reg.history()]
    assert moves == [
        ("production", None, "v0001", "first", "alice"),
        ("previous", None, "v0001", None, "alice"), ("production", "v0001", "v0002", None, "alice"),
        ("previous", "v0001", "v0002", "v0002 misbehaves", "unknown"),
        ("production", "v0002", "v0001", "v0002 misbehaves", "unknown"),
    ]
    assert all(h["time"].endswith("+00:00") for h in reg.history())
    assert reg.aliases() == {"production": "v0001", "previous": "v0002"}
    check_invariants(reg)


def test_rollback_without_previous_is_refused(tmp_path):
    reg = Registry(tmp_path / "models")
    with pytest.raises(RegistryError, match="previous"):
        reg.rollback()
    reg.register(fake_candidate(tmp_path, "a"), {})
    reg.promote("v0001")
    with pytest.raises(RegistryError, match="previous"):
        reg.rollback()
    assert reg.resolve("production") == "v0001" and len(reg.history()) == 1


def test_register_and_promote_records_gate_passed(tmp_path, model_dir):
    reg = Registry(tmp_path / "models")
    register_and_promote(reg, model_dir, {}, works=CLASSIFICATION.works)
    assert [(h["alias"], h["to"], h["reason"]) for h in reg.history()] == [("production", "v0001", "gate passed")]


# --- lineage and model card -----------------------------------------------------------

def test_lineage_walks_parents_to_the_first_batch(tmp_path):
    reg = Registry(tmp_path / "models")
    parent = None
    for i in range(3):
        meta = {"parent": parent, "batch_id": f"b{i}", "source": f"s{i}.csv", "created_at": f"2025-01-0{i + 1}",
                "metrics": {"overall": {"accuracy": 0.5 + i / 10, "rows": 10, "macro_f1": 0.5}}}
        parent = reg.register(fake_candidate(tmp_path, str(i)), meta)
    lineage = reg.lineage("v0003")
    assert [e["version"] for e in lineage] == ["v0003", "v0002", "v0001"]
    assert lineage[-1] == {"version": "v0001", "batch_id": "b0", "source": "s0.csv",
                           "created_at": "2025-01-01", "accuracy": 0.5, "metric": "accuracy", "score": 0.5}
    card = (reg.path("v0003") / "README.md").read_text()
    assert all(f"| {v} | b{i} | s{i}.csv |" in card for i, v in enumerate(["v0001", "v0002", "v0003"]))


def test_lineage_survives_a_missing_parent_and_a_cycle(tmp_path):
    reg = Registry(tmp_path / "models")
    reg.register(fake_candidate(tmp_path, "a"), {"parent": "v0002"})  # a cycle once v0002 exists
    reg.register(fake_candidate(tmp_path, "b"), {"parent": "v0001"})
    assert [e["version"] for e in reg.lineage("v0002")] == ["v0002", "v0001"]
    reg.register(fake_candidate(tmp_path, "c"), {"parent": "v0042"})
    assert [e["version"] for e in reg.lineage("v0003")] == ["v0003"]


def test_real_version_carries_a_card_with_its_labels(tmp_path, model_dir):
    reg = Registry(tmp_path / "models")
    version = register_and_promote(reg, model_dir, {"batch_id": "b1"}, works=CLASSIFICATION.works)
    card = (reg.root / "production" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "`weather`, `music`" in card and reg.metadata(version)["labels"] == ["weather", "music"]


# --- concurrency ----------------------------------------------------------------------

def assert_no_move_lost(reg: Registry, versions: list[str]) -> None:
    """Every promotion is in the history, and each production move starts where the one
    before it ended: no writer read a stale production and overwrote another's move."""
    moves = [h for h in reg.history() if h["alias"] == "production"]
    assert sorted(m["to"] for m in moves) == sorted(versions)
    assert [m["from"] for m in moves] == [None] + [m["to"] for m in moves[:-1]]
    previous = [h for h in reg.history() if h["alias"] == "previous"]
    assert [p["to"] for p in previous] == [m["to"] for m in moves[:-1]]
    assert reg.resolve("production") == moves[-1]["to"]
    check_invariants(reg)


@pytest.mark.reliability
def test_concurrent_promotions_in_threads_never_lose_one(tmp_path):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    reg = Registry(tmp_path / "models")
    candidates = [fake_candidate(tmp_path, f"t{i}") for i in range(8)]
    start = threading.Barrier(len(candidates))

    def promote(candidate):
        start.wait()  # all eight register and promote at the same moment
        version = Registry(reg.root).register(candidate, {"tag": candidate.name})
        Registry(reg.root).promote(version, reason=candidate.name)
        return version

    with ThreadPoolExecutor(len(candidates)) as pool:
        versions = list(pool.map(promote, candidates))
    assert sorted(versions) == [f"v{i:04d}" for i in range(1, 9)]
    for version, candidate in zip(versions, candidates):
        assert (reg.path(version) / "payload.txt").read_text() == candidate.name[len("cand-"):]
    assert_no_move_lost(reg, versions)


def _promote_each(root: str, candidates: list[str]) -> list[str]:
    reg, made = Registry(Path(root)), []
    for candidate in candidates:
        made.append(reg.register(Path(candidate), {}))
        reg.promote(made[-1], reason=candidate)
    return made


@pytest.mark.reliability
def test_concurrent_promotions_in_processes_never_lose_one(tmp_path):
    """Separate processes (forked: the registry is already imported, so they start at once)."""
    import multiprocessing

    reg = Registry(tmp_path / "models")
    groups = [[str(fake_candidate(tmp_path, f"p{w}-{i}")) for i in range(3)] for w in range(4)]
    with multiprocessing.get_context("fork").Pool(len(groups)) as pool:
        outputs = pool.starmap(_promote_each, [(str(reg.root), g) for g in groups])
    versions = [v for out in outputs for v in out]
    assert sorted(versions) == [f"v{i:04d}" for i in range(1, 13)]
    assert_no_move_lost(reg, versions)
