"""Registry: immutable numbered versions, aliases that never point at a missing version,
a production symlink, and promotion only of a version that loads."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from tasks.model import load_base, load_classifier, save_classifier
from tasks.registry import Registry, RegistryError, register_and_promote


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
    v1 = register_and_promote(reg, model_dir, {"parent": None})
    v2 = register_and_promote(reg, model_dir, {"parent": v1})
    assert (v1, v2) == ("v0001", "v0002")
    assert reg.aliases() == {"production": "v0002", "previous": "v0001"}
    clf = load_classifier(reg.root / "production")
    assert clf.labels == ["weather", "music"]
    enc = clf.tokenizer(["rain today"], return_tensors="pt")
    with torch.inference_mode():
        assert clf.model(**enc).logits.shape == (1, 2)
    assert reg.metadata(v2)["parent"] == "v0001"
    check_invariants(reg)


def test_register_and_promote_never_points_at_a_broken_version(tmp_path, model_dir):
    reg = Registry(tmp_path / "models")
    good = register_and_promote(reg, model_dir, {})
    before = reg.aliases_path.read_bytes()
    broken = fake_candidate(tmp_path, "broken")  # right files, garbage weights
    shutil.copy(model_dir / "config.json", broken / "config.json")
    with pytest.raises(Exception):
        register_and_promote(reg, broken, {})
    assert reg.resolve("production") == good
    assert reg.aliases_path.read_bytes() == before
    assert (reg.root / "production").resolve() == reg.path(good).resolve()
    check_invariants(reg)
