"""`ratchet audit VERSION`: rebuild a promotion from what it recorded, and compare.

The version's metadata.json names the code (git revision), the data and the registry it
trained from (DVC hashes of data/ and models/versions), and the effective parameters.
The audit checks that revision out into a temporary git worktree, restores data/ and the
parent's weights from the DVC cache (pulling from the default remote when one is set),
verifies every restored file against DVC's recorded manifest, writes the recorded params
(with audit.batch/audit.parent naming this promotion) and runs `dvc repro gate` there:
the revision's own stage code, not today's. It then compares the rebuilt candidate's
weights hash, exam metrics and gate decision with the recorded ones. On CPU the
rebuild must be bitwise equal; when either run trained on another device, metrics may
differ by `DEVICE_TOLERANCE` and the weights hash is reported, not required.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks.audit.record import MODELS_DVC, AuditError, default_remote, git
from tasks.registry.store import Registry, weights_sha256
from tasks.core.workspace import Workspace

DEVICE_TOLERANCE = 0.02   # absolute, on every exam metric, when a run was not on CPU
SHOWN = 12                # differences listed per kind before "and N more"


@dataclass(frozen=True)
class Difference:
    what: str
    recorded: Any
    rebuilt: Any

    def line(self) -> str:
        return f"{self.what}: recorded {self.recorded!r}, rebuilt {self.rebuilt!r}"


@dataclass
class AuditReport:
    version: str
    revision: str | None
    tolerance: float = 0.0
    differences: list[Difference] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.differences

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def text(self) -> str:
        head = f"{'PASS' if self.passed else 'FAIL'}: audit of {self.version} at {self.revision}"
        how = "bitwise (CPU)" if self.tolerance == 0 else f"tolerance {self.tolerance} (not CPU)"
        lines = [head, f"  compared {how}"]
        lines += [f"  ok: {m}" for m in self.matched]
        lines += [f"  DIFFERS {d.line()}" for d in self.differences]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaves: {"a": {"b": 1}} -> {"a.b": 1}."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out |= flatten(value, f"{prefix}{key}.")
        return out
    return {prefix.rstrip("."): tree}


def compare_values(what: str, recorded: dict, rebuilt: dict, tolerance: float = 0.0) -> list[Difference]:
    """Leaf-by-leaf differences; numbers within `tolerance` count as equal."""
    flat_a, flat_b = flatten(recorded), flatten(rebuilt)
    out = []
    for key in sorted(set(flat_a) | set(flat_b)):
        a, b = flat_a.get(key), flat_b.get(key)
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
        if (abs(a - b) > tolerance) if numbers else a != b:
            out.append(Difference(f"{what} {key}", a, b))
    return out


def _cap(diffs: list[Difference], what: str) -> list[Difference]:
    if len(diffs) <= SHOWN:
        return diffs
    return diffs[:SHOWN] + [Difference(f"{what}: and {len(diffs) - SHOWN} more", None, None)]


def replay_params(meta: dict, raw_batch: str, overrides: dict[str, Any] | None = None) -> dict:
    """The recorded params, plus what-if overrides, pointed at this promotion."""
    params = json.loads(json.dumps(meta["params"]))
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        params.setdefault(section, {})[key] = value
    params["audit"] = {**params.get("audit", {}), "batch": raw_batch, "parent": meta.get("parent") or "none"}
    return params


def _dvc_file(hash_value: str, path: str) -> str:
    return yaml.safe_dump({"outs": [{"md5": hash_value, "hash": "md5", "path": path}]}, sort_keys=False)


def _md5(path: Path) -> str:
    """DVC names cached files by MD5; streamed like integrity.sha256_file."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def materialise(repo_root: Path, dir_hash: str, out: Path, what: str) -> list[Difference]:
    """Copy a recorded directory out of the DVC cache, checking every file against the md5
    its manifest lists as it goes: a changed byte is named here, file by file (DVC's own
    checkout would refuse the corrupted object without saying which recorded file it is)."""
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        odb = repo.cache.local
        manifest = Path(odb.oid_to_path(dir_hash))
        if not manifest.is_file():
            return [Difference(f"{what} manifest {dir_hash}", "in the DVC cache or remote", "missing")]
        if _md5(manifest) != dir_hash.removesuffix(".dir"):
            return [Difference(f"{what} manifest {dir_hash} (md5)", dir_hash, _md5(manifest))]
        diffs = []
        for entry in json.loads(manifest.read_text()):
            source, target = Path(odb.oid_to_path(entry["md5"])), out / entry["relpath"]
            if not source.is_file():
                diffs.append(Difference(f"{what} file {entry['relpath']}", entry["md5"], "missing from the DVC cache"))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            actual = _md5(target)
            if actual != entry["md5"]:
                diffs.append(Difference(f"{what} file {entry['relpath']} (md5)", entry["md5"], actual))
    return _cap(diffs, what)


def _restore(tree: Path, ws: Workspace, reg: Registry, meta: dict) -> list[Difference]:
    """data/ and the parent's registry into the worktree, from the recorded DVC hashes:
    fetched from the default remote when one is set (DVC re-fetches a cached object that
    no longer matches its hash), then copied out of the cache and verified."""
    from dvc.repo import Repo

    local = ws.root / ".dvc" / "config.local"  # remotes and credentials kept out of git
    if local.exists():
        (tree / ".dvc" / "config.local").write_text(local.read_text())
    with Repo(str(tree)) as repo, repo.config.edit("local") as conf:
        conf["cache"]["dir"] = str(ws.root / ".dvc" / "cache")
    targets = {"data.dvc": (meta["dvc_data_hash"], "data", tree / "data")}
    (tree / "data.dvc").write_text(_dvc_file(meta["dvc_data_hash"], "data"))
    if meta.get("dvc_models_hash"):
        (tree / "models").mkdir(exist_ok=True)
        (tree / MODELS_DVC).write_text(_dvc_file(meta["dvc_models_hash"], "versions"))
        targets[MODELS_DVC] = (meta["dvc_models_hash"], "registry", tree / "models" / "versions")
    elif meta.get("parent"):  # recorded before the registry was in DVC: the verified local copy
        shutil.copytree(reg.checked_path(meta["parent"]), tree / "models" / "versions" / meta["parent"])
    diffs = []
    if default_remote(tree):
        try:
            with Repo(str(tree)) as repo:
                repo.fetch(targets=[str(tree / t) for t in targets])
        except Exception as exc:  # DVC names the objects it could not fetch or verify
            diffs.append(Difference("dvc fetch from the default remote", "complete", f"{type(exc).__name__}: {exc}"))
    for hash_value, what, out in targets.values():
        diffs += materialise(tree, hash_value, out, what)
    return diffs


def _env(tree: Path, threads: int = 0) -> dict[str, str]:
    # the stages must import the revision's tasks/, with this interpreter on PATH; on CPU they
    # train with the recorded torch thread count, without which the weights differ in the last bits
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(tree)}
    return env | ({"OMP_NUM_THREADS": str(threads)} if threads else {})


def _dvc(tree: Path, *args: str, check: bool = True, threads: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=tree, env=_env(tree, threads),
                          capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AuditError(f"dvc {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[-2000:]}")
    return done


def _raw_batch(tree: Path, batch_id: str) -> str:
    found = sorted((tree / "data" / "batches" / batch_id / "raw").glob("*"))
    if not found:
        raise AuditError(f"audit: the restored data/ has no raw file for batch {batch_id}")
    return str(found[0].relative_to(tree))


def _compare(tree: Path, meta: dict, report: AuditReport) -> None:
    build = tree / "build"
    rebuilt_train = json.loads((build / "finetune" / "metrics.json").read_text())
    devices = {rebuilt_train.get("device"), (meta.get("train") or {}).get("device")}
    report.tolerance = 0.0 if devices == {"cpu"} else DEVICE_TOLERANCE
    batch = json.loads((build / "intake" / "batch.json").read_text())["batch_id"]
    checks = [Difference("batch id (content hash)", meta["batch_id"], batch)]
    sha = weights_sha256(build / "finetune" / "candidate")
    weights = Difference("weights sha256", meta["weights_sha256"], sha)
    if report.tolerance == 0:
        checks.append(weights)
    elif weights.recorded != weights.rebuilt:
        report.notes.append(f"weights differ off CPU, as expected ({weights.line()})")
    for d in checks:
        (report.matched.append(f"{d.what} {d.rebuilt}") if d.recorded == d.rebuilt else report.differences.append(d))
    scores = json.loads((build / "evaluate" / "scores.json").read_text())["candidate"]["all"]
    metric_diffs = compare_values("metric", meta["metrics"], scores, report.tolerance)
    report.differences += _cap(metric_diffs, "metric")
    if not metric_diffs:
        report.matched.append(f"exam metrics ({len(flatten(meta['metrics']))} values)")
    decision = json.loads((build / "gate" / "decision.json").read_text())
    verdicts = lambda g: {c["name"]: c["verdict"] for c in g.get("checks", [])}  # noqa: E731
    gate_diffs = compare_values("gate", {"promote": meta["gate"]["promote"], "verdicts": verdicts(meta["gate"])},
                                {"promote": decision["promote"], "verdicts": verdicts(decision)})
    report.differences += gate_diffs
    if not gate_diffs:
        report.matched.append(f"gate decision promote={decision['promote']}")


def audit_in_tree(tree: Path, ws: Workspace, reg: Registry, meta: dict, overrides: dict | None) -> AuditReport:
    """The audit proper, in a checked-out worktree of the recorded revision."""
    report = AuditReport(meta["version"], meta.get("git_rev"))
    if meta.get("git_dirty"):
        report.notes.append("the run's working tree had uncommitted changes; the revision may not be what ran")
    restored = _restore(tree, ws, reg, meta)
    if restored:  # a rebuild from bytes that are not the recorded ones proves nothing
        report.differences += restored
        return report
    report.matched.append(f"data/ {meta['dvc_data_hash']}" + (f", registry {meta['dvc_models_hash']}"
                                                                if meta.get("dvc_models_hash") else ""))
    at_rev = yaml.safe_load((tree / "params.yaml").read_text()) or {}
    params = replay_params(meta, _raw_batch(tree, meta["batch_id"]), overrides)
    param_diffs = compare_values("param", {k: v for k, v in meta["params"].items() if k != "audit"},
                                 {k: v for k, v in params.items() if k != "audit"})
    report.differences += param_diffs
    revision_diffs = [d.what for d in compare_values("param", {k: v for k, v in meta["params"].items() if k != "audit"},
                                                     {k: v for k, v in at_rev.items() if k != "audit"})
                      if d.rebuilt is not None]
    if revision_diffs:
        report.notes.append("params.yaml at the revision differs from the recorded params (a --set run?): "
                            + ", ".join(revision_diffs[:SHOWN]) + "; the recorded params were replayed")
    (tree / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = _dvc(tree, "repro", "--force", "--no-run-cache", "gate", check=False,
                threads=(meta.get("train") or {}).get("threads", 0))
    if done.returncode != 0:
        report.differences.append(Difference("pipeline", "completed", (done.stderr or done.stdout).strip()[-800:]))
        return report
    _compare(tree, meta, report)
    return report


def audit_version(root: str | Path, version: str, overrides: dict[str, Any] | None = None) -> AuditReport:
    """Rebuild `version` from its recorded revision, data and params; the comparison."""
    ws = Workspace.at(root)
    reg = Registry(ws.models_dir)
    meta = reg.metadata(version)
    if not meta.get("git_rev") or not meta.get("dvc_data_hash"):
        raise AuditError(f"audit: {version} recorded no git revision or DVC data hash "
                         "(was it promoted in a git + DVC workspace?)")
    with tempfile.TemporaryDirectory(prefix="ratchet-audit-") as tmp:
        tree = Path(tmp) / "tree"
        git(ws.root, "worktree", "add", "--detach", "-q", str(tree), meta["git_rev"])
        try:
            return audit_in_tree(tree, ws, reg, meta, overrides)
        finally:
            git(ws.root, "worktree", "remove", "--force", str(tree), check=False)
            git(ws.root, "worktree", "prune", check=False)
