"""Registry mirror on S3, against moto's server on 127.0.0.1 over real HTTP: a version is
visible only once its manifest is written, the alias moves last and conditionally, crashes
leave production on a complete version and a retry completes, interleaved writers never
lose a promotion, and a pull checks every byte."""

from __future__ import annotations

import hashlib
import json

import pytest

import tasks.registry.registry_s3 as registry_s3
from tasks.registry.store import Registry, RegistryError
from tasks.registry.registry_s3 import Mirror, MirrorError, move_production, publish, pull, push_version
from tasks.core.storage import head, list_objects, put_bytes, read_bytes

pytestmark = pytest.mark.reliability


def candidate(root, tag: str):
    path = root / f"cand-{tag}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(hashlib.sha256(tag.encode()).digest() * 64)
    (path / "config.json").write_text(json.dumps({"tag": tag}))
    (path / "tokenizer").mkdir()
    (path / "tokenizer" / "vocab.txt").write_text(f"[PAD]\n{tag}\n")
    return path


def local_registry(root, tags: str, promote: bool = True) -> Registry:
    reg = Registry(root / "models")
    parent = None
    for tag in tags:
        parent = reg.register(candidate(root / "c", tag), {"parent": parent, "batch_id": f"b-{tag}"})
        if promote:
            reg.promote(parent, reason=f"gate passed {tag}")
    return reg


@pytest.fixture
def mirror(s3_bucket) -> Mirror:
    return Mirror(f"s3://{s3_bucket}/ratchet/registry")


def remote_files(mirror: Mirror, version: str) -> set[str]:
    prefix = mirror.at("versions", version) + "/"
    return {o.uri[len(prefix):] for o in list_objects(prefix)}


def test_publish_uploads_files_then_manifest_then_moves_production(tmp_path, mirror):
    reg = local_registry(tmp_path, "a")
    done = publish(reg, mirror)
    assert done["version"] == "v0001" and done["production"] == "v0001"
    assert remote_files(mirror, "v0001") == {"model.safetensors", "config.json", "tokenizer/vocab.txt", "README.md",
                                             "metadata.json", "manifest.json", ".claim.json"}
    record = mirror.manifest("v0001")
    assert record["files"]["model.safetensors"] == reg.metadata("v0001")["weights_sha256"]
    assert record["files"]["metadata.json"] == hashlib.sha256((reg.path("v0001") / "metadata.json").read_bytes()).hexdigest()
    assert mirror.versions() == ["v0001"] and mirror.aliases()[0] == {"production": "v0001"}

    reg.promote(reg.register(candidate(tmp_path / "c", "b"), {"parent": "v0001"}))
    publish(reg, mirror, reason="second")
    assert mirror.versions() == ["v0001", "v0002"]
    assert mirror.aliases()[0] == {"production": "v0002", "previous": "v0001"}
    moves = [(m["alias"], m["from"], m["to"]) for h in mirror.history() for m in h["moves"]]
    assert moves == [("production", None, "v0001"), ("previous", None, "v0001"), ("production", "v0001", "v0002")]
    assert mirror.history()[-1]["reason"] == "second"
    assert publish(reg, mirror)["moves"] == {}  # rerunning is a no-op


def test_pull_restores_production_on_a_fresh_machine(tmp_path, mirror):
    reg = local_registry(tmp_path / "here", "ab")
    publish(reg, mirror)
    fresh = Registry(tmp_path / "there" / "models")
    assert pull(mirror, fresh) == "v0002"
    assert fresh.resolve("production") == "v0002" and fresh.verify("v0002") == []
    assert (fresh.root / "production" / "tokenizer" / "vocab.txt").read_text() == "[PAD]\nb\n"
    assert fresh.history()[-1]["reason"] == f"pulled from {mirror.uri}"
    assert pull(mirror, fresh) == "v0002"  # already here and identical: nothing to do
    # the next local version continues the numbering
    assert fresh.register(candidate(tmp_path / "c2", "c"), {}) == "v0003"


def test_a_crash_while_uploading_leaves_the_version_invisible_and_a_retry_completes(tmp_path, mirror, monkeypatch):
    reg = local_registry(tmp_path, "a")
    publish(reg, mirror)
    reg.promote(reg.register(candidate(tmp_path / "c", "b"), {"parent": "v0001"}))
    real_upload, uploaded = registry_s3.upload_file, []

    def crash_after_two(path, uri, **kw):
        if len(uploaded) == 2:
            raise KeyboardInterrupt("power cut")  # not an Exception: nothing may catch it
        uploaded.append(uri)
        real_upload(path, uri, **kw)

    monkeypatch.setattr(registry_s3, "upload_file", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        publish(reg, mirror)
    assert len(remote_files(mirror, "v0002")) == 3  # the claim and two files
    assert mirror.versions() == ["v0001"] and mirror.manifest("v0002") is None
    assert mirror.aliases()[0] == {"production": "v0001"}
    with pytest.raises(MirrorError, match="v0002 is not"):
        pull(mirror, Registry(tmp_path / "fresh"), "v0002")
    with pytest.raises(MirrorError, match="push it first"):
        move_production(mirror, "v0002")

    monkeypatch.setattr(registry_s3, "upload_file", real_upload)
    publish(reg, mirror)  # the retry
    assert mirror.versions() == ["v0001", "v0002"]
    assert mirror.aliases()[0] == {"production": "v0002", "previous": "v0001"}
    assert pull(mirror, Registry(tmp_path / "fresh" / "models")) == "v0002"


def test_a_crash_between_manifest_and_alias_move_keeps_production_and_a_retry_moves_it(tmp_path, mirror, monkeypatch):
    reg = local_registry(tmp_path, "a")
    publish(reg, mirror)
    reg.promote(reg.register(candidate(tmp_path / "c", "b"), {"parent": "v0001"}))

    def crash(*args, **kwargs):
        raise RuntimeError("crashed before moving the alias")

    monkeypatch.setattr(registry_s3, "move_production", crash)
    with pytest.raises(RuntimeError):
        publish(reg, mirror)
    assert mirror.versions() == ["v0001", "v0002"]  # complete, just not production
    assert mirror.aliases()[0] == {"production": "v0001"}
    assert pull(mirror, Registry(tmp_path / "fresh" / "models")) == "v0001"

    monkeypatch.undo()
    publish(reg, mirror)
    assert mirror.aliases()[0] == {"production": "v0002", "previous": "v0001"}
    assert [m["to"] for h in mirror.history() for m in h["moves"] if m["alias"] == "production"] == ["v0001", "v0002"]


def test_interleaved_alias_moves_never_lose_a_promotion(tmp_path, mirror, monkeypatch):
    """Writer B reads aliases.json, writer A moves production, then B writes with the
    stale ETag: S3 refuses it, B re-reads and moves on top. (Interleaved deterministically:
    moto checks If-Match without a lock, so simultaneous requests would test nothing.)"""
    reg = local_registry(tmp_path, "abc", promote=False)
    for version in reg.versions():
        push_version(reg, mirror, version)
    move_production(mirror, "v0001")
    real_aliases, writes = Mirror.aliases, []

    def a_moves_after_b_reads(self):
        got = real_aliases(self)
        if not writes:
            writes.append("A")
            assert move_production(mirror, "v0002", reason="A") == {"production": "v0002", "previous": "v0001"}
        return got

    monkeypatch.setattr(Mirror, "aliases", a_moves_after_b_reads)
    moves = move_production(mirror, "v0003", reason="B")
    monkeypatch.undo()
    assert moves == {"production": "v0003", "previous": "v0002"}  # applied on top of A's move
    assert mirror.aliases()[0] == {"production": "v0003", "previous": "v0002"}
    production = [(m["from"], m["to"], h["reason"]) for h in mirror.history() for m in h["moves"]
                  if m["alias"] == "production"]
    assert production == [(None, "v0001", None), ("v0001", "v0002", "A"), ("v0002", "v0003", "B")]


def test_a_writer_that_keeps_losing_gives_up_with_a_clear_error(tmp_path, mirror, monkeypatch):
    reg = local_registry(tmp_path, "ab", promote=False)
    for version in reg.versions():
        push_version(reg, mirror, version)
    real_aliases, others = Mirror.aliases, []

    def always_stale(self):
        got = real_aliases(self)
        others.append(len(others))  # someone else moves it every time (new content, new ETag)
        put_bytes(mirror.at("aliases.json"), json.dumps({"production": "v0001", "n": others[-1]}).encode())
        return got

    monkeypatch.setattr(Mirror, "aliases", always_stale)
    with pytest.raises(MirrorError, match="changed 8 times"):
        move_production(mirror, "v0002")


def test_first_alias_write_is_if_none_match(tmp_path, mirror, monkeypatch):
    """Two first-ever moves: the second sees the object the first created and retries."""
    reg = local_registry(tmp_path, "ab", promote=False)
    for version in reg.versions():
        push_version(reg, mirror, version)
    real_aliases, done = Mirror.aliases, []

    def other_creates_it_first(self):
        got = real_aliases(self)
        if not done:
            done.append(1)
            move_production(mirror, "v0001")
        return got

    monkeypatch.setattr(Mirror, "aliases", other_creates_it_first)
    move_production(mirror, "v0002")
    monkeypatch.undo()
    assert mirror.aliases()[0] == {"production": "v0002", "previous": "v0001"}


def test_two_registries_cannot_both_own_a_version_name(tmp_path, mirror, monkeypatch):
    ours = local_registry(tmp_path / "ours", "a")
    theirs = local_registry(tmp_path / "theirs", "z")
    publish(ours, mirror)
    with pytest.raises(MirrorError, match="different model"):
        publish(theirs, mirror)
    assert mirror.aliases()[0] == {"production": "v0001"} and mirror.manifest("v0001")["files"] == \
        {**ours.metadata("v0001")["files"], "metadata.json": mirror.manifest("v0001")["files"]["metadata.json"]}

    # a writer that crashed after claiming v0002 keeps a different v0002 from interleaving with it
    ours.promote(ours.register(candidate(tmp_path / "ours" / "c", "b"), {}))
    theirs.register(candidate(tmp_path / "theirs" / "c", "y"), {})
    monkeypatch.setattr(registry_s3, "upload_file", lambda *a, **k: (_ for _ in ()).throw(OSError("cut")))
    with pytest.raises(OSError):
        push_version(theirs, mirror, "v0002")
    monkeypatch.undo()
    with pytest.raises(MirrorError, match="claimed by a different version"):
        publish(ours, mirror)
    assert mirror.versions() == ["v0001"]


def test_pull_refuses_a_tampered_remote_object_and_writes_nothing(tmp_path, mirror):
    reg = local_registry(tmp_path, "a")
    publish(reg, mirror)
    weights = mirror.at("versions", "v0001", "model.safetensors")
    data = bytearray(read_bytes(weights))
    data[5] ^= 1
    put_bytes(weights, bytes(data))
    fresh = Registry(tmp_path / "fresh" / "models")
    with pytest.raises(MirrorError, match="v0001.*integrity.*model.safetensors"):
        pull(mirror, fresh)
    assert fresh.versions() == [] and fresh.resolve("production") is None
    assert not list(fresh.versions_dir.iterdir())  # no staging left behind


def test_pull_refuses_a_local_version_of_the_same_name_with_other_content(tmp_path, mirror):
    publish(local_registry(tmp_path / "a", "a"), mirror)
    other = local_registry(tmp_path / "b", "z")
    with pytest.raises(MirrorError, match="local v0001 differs"):
        pull(mirror, other)
    assert other.resolve("production") == "v0001" and other.verify("v0001") == []


def test_publish_refuses_a_damaged_local_version(tmp_path, mirror):
    reg = local_registry(tmp_path, "a")
    (reg.path("v0001") / "config.json").write_text("{}")
    with pytest.raises(RegistryError, match="config.json"):
        publish(reg, mirror)
    assert head(mirror.at("aliases.json")) is None and mirror.versions() == []


def test_publish_of_a_version_no_longer_local_production_only_pushes(tmp_path, mirror):
    """Two local promotions, the first published late: the remote production must not go
    back to it (the local lock makes remote order follow local order)."""
    reg = local_registry(tmp_path, "ab")
    publish(reg, mirror, "v0002")
    done = publish(reg, mirror, "v0001")
    assert done["moves"] == {} and done["production"] == "v0002"
    assert mirror.versions() == ["v0001", "v0002"]


def test_mirror_from_config():
    from tasks.core.config import RegistryConfig

    assert Mirror.from_config(RegistryConfig()) is None
    got = Mirror.from_config(RegistryConfig(mirror="s3://b/p/", endpoint_url="http://127.0.0.1:1"))
    assert got == Mirror("s3://b/p", "http://127.0.0.1:1") and got.at("aliases.json") == "s3://b/p/aliases.json"
    assert Mirror("s3://b").at("versions", "v0001") == "s3://b/versions/v0001"
