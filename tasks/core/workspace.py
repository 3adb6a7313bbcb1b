"""Workspace: where each part of the path lives on disk.

A workspace is a repository root (the current directory or `--workspace DIR`). Every
stage asks this object for its paths instead of building strings, so the layout in
docs/architecture.md is written down exactly once. Creating the object touches nothing on
disk; stages create what they write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | Path = ".") -> "Workspace":
        return cls(Path(root).resolve())

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "landing"

    @property
    def batches_dir(self) -> Path:
        return self.data_dir / "batches"

    def batch_dir(self, batch_id: str) -> Path:
        return self.batches_dir / batch_id

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def exam_dir(self) -> Path:
        return self.data_dir / "exam"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def run_dir(self, run_id: str) -> Path:
        return self.reports_dir / run_id

    @property
    def scratch_dir(self) -> Path:
        """Candidates being trained live here until the registry takes them."""
        return self.root / ".ratchet" / "candidates"
