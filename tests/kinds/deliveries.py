"""Tiny deliveries for every task type, in the format that type's data team would send.

`DELIVERIES[task_type]` knows a tiny workspace's params.yaml, how to write a good batch
about some labels (classification), entity types (ner) or a domain (toy), a bad batch
and the reason its quarantine must give, and how `ratchet status` and the model card
name the type's metric. The conformance module and the reliability drills share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from conftest import TINY_NER_PARAMS, TINY_PARAMS, toy_frame, toy_ner_frame
from kinds.toy import toy_digit_frame, write_lines
from tasks.ner.conll import to_jsonl


@dataclass(frozen=True)
class Deliveries:
    kind: str                          # task.type
    task_params: str                   # what a tiny workspace's params.yaml adds for this kind
    suffix: str                        # the delivered files' extension
    batches: tuple[tuple[str, ...], ...]  # what each successive delivery is about
    new_labels: tuple[str, ...]        # the labels the second delivery brings (the head grows)
    metric_label: str                  # how `ratchet status` and the card name the metric
    bad: bytes                         # a delivery validation rejects
    bad_reason: str                    # ... and words its quarantine reason must hold

    @property
    def params(self) -> str:
        """A tiny workspace's params.yaml (tests/conftest.py TINY_PARAMS) for this kind."""
        return TINY_PARAMS + self.task_params

    def frame(self, about: tuple[str, ...], seed: int, slice_name: str | None, size: int) -> pd.DataFrame:
        if self.kind == "ner":
            return toy_ner_frame(list(about), sentences=size, seed=seed, slice_name=slice_name)
        if self.kind == "toy":
            return toy_digit_frame(about[0], rows=size, seed=seed, slice_name=slice_name)
        return toy_frame(list(about), per_label=size // len(about), seed=seed, slice_name=slice_name)

    def encode(self, frame: pd.DataFrame) -> bytes:
        if self.kind == "ner":
            return to_jsonl(frame).encode()
        if self.kind == "toy":
            return write_lines(frame)
        return frame.to_csv(index=False).encode()

    def write(self, stem: Path, about: tuple[str, ...], *, seed: int, slice_name: str | None = None,
              size: int = 60) -> Path:
        """A good delivery at `stem` + the kind's suffix."""
        path = Path(f"{stem}{self.suffix}")
        path.write_bytes(self.encode(self.frame(about, seed, slice_name, size)))
        return path


def _bad_ner() -> bytes:
    frame = toy_ner_frame(["PER"], sentences=8, seed=5)
    frame.at[2, "tags"] = ["I-PER"] + list(frame.at[2, "tags"])[1:]  # an entity that never began
    return to_jsonl(frame).encode()


def _bad_toy() -> bytes:
    good = write_lines(toy_digit_frame("home", rows=12, seed=5)).decode().splitlines(keepends=True)
    good[3] = good[3].split(" ", 1)[1]  # the line loses its __label__ field
    return "".join(good).encode()


DELIVERIES = {d.kind: d for d in (
    Deliveries("classification", "", ".csv",
               (("weather", "music"), ("food", "travel"), ("bank", "sport"), ("health", "car"), ("weather", "music")),
               ("food", "travel"), "accuracy",
               b"text,slice\r\nhello there,A\r\n\"quoted, text\",A\r\n" * 5, "label"),
    Deliveries("ner", TINY_NER_PARAMS.removeprefix(TINY_PARAMS), ".jsonl",
               (("PER", "LOC"), ("ORG", "PER"), ("MISC", "LOC"), ("ORG", "MISC"), ("PER", "LOC")),
               ("ORG",), "entity F1", _bad_ner(), "sentence 3: token 0"),
    Deliveries("toy", "task: {type: toy}\n", ".txt",
               (("home",), ("office",), ("sea",), ("farm",), ("home",)),
               (), "balanced accuracy", _bad_toy(), "line 4: no __label__"),
)}
