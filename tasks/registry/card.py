"""Model card: the README.md written into every registry version.

A version is a plain transformers directory meant to be used without Ratchet, so what it
is, which data made it, how it scored and why the gate let it through travel with it, in
the Hugging Face model-card shape (YAML front matter + Markdown) that hubs and people
already read. Pure rendering from metadata.json: no I/O, and tolerant of missing or
extra keys, because metadata from older versions and from audits differs in detail.
"""

from __future__ import annotations

from typing import Any

import yaml

from tasks.registry.matrix import metric_label, summary

FRONT_MATTER = {"library_name": "transformers", "pipeline_tag": "text-classification", "tags": ["ratchet"]}
# what a version of each pipeline is, and how to call it (the kind records `pipeline_tag`)
MODEL_OF = {"text-classification": ("A text classifier", '"freeze my account please"'),
            "token-classification": ("A named-entity tagger", '"Alice moved to Paris"')}


def _pipeline(metadata: dict) -> str:
    return metadata.get("pipeline_tag") or FRONT_MATTER["pipeline_tag"]


def _cell(value: Any) -> str:
    """A value as one Markdown table cell: numbers to 4 places, never a broken row."""
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    """A value as inline code outside tables, where a pipe is just a pipe."""
    return "`" + str(value).replace("`", "'").replace("\n", " ") + "`"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def _accuracy(metadata: dict) -> float | None:
    overall = (metadata.get("metrics") or {}).get("overall") or {}
    return overall.get("accuracy") if isinstance(overall, dict) else None


def _about(metadata: dict, lineage: list[dict]) -> list[str]:
    version = metadata.get("version", "unversioned")
    base = ((metadata.get("params") or {}).get("model") or {}).get("base", "unknown")
    lines = [f"# Ratchet model {version}", "",
             f"{MODEL_OF.get(_pipeline(metadata), ('A model',))[0]} trained continually by Ratchet: each version fine-tunes its parent on one "
             "newly delivered labeled batch plus a replay sample of earlier ones, and was promoted only "
             "because no held-out slice seen so far got worse beyond tolerance.", ""]
    facts = [("base encoder", base), ("parent version", metadata.get("parent") or "none (first batch)"),
             ("batches learned", len(metadata.get("batch_ids") or []) or len(lineage) or None),
             ("created", metadata.get("created_at")), ("git revision", metadata.get("git_rev")),
             ("params hash", metadata.get("params_hash")), ("DVC data hash", metadata.get("dvc_data_hash")),
             ("weights sha256", metadata.get("weights_sha256"))]
    return lines + [f"- {name}: {_code(value)}" for name, value in facts if value not in (None, "")]


def _labels(metadata: dict) -> list[str]:
    labels = metadata.get("labels") or []
    if not labels:
        return ["## Labels", "", "Not recorded for this version; see `config.json` (`id2label`)."]
    return ["## Labels", "", f"{len(labels)} labels (id order): " + ", ".join(_code(label) for label in labels)]


def _lineage(lineage: list[dict]) -> list[str]:
    lines = ["## Data lineage", "", "Newest first, back to the first batch; each row is one promotion.", ""]
    if not lineage:
        return lines + ["No lineage recorded."]
    rows = [[e.get("version"), e.get("batch_id"), e.get("source"), e.get("created_at"),
             e.get("score", e.get("accuracy"))] for e in lineage]
    metric = metric_label(lineage[0].get("metric"))
    return lines + _table(["version", "batch", "source", "created", f"exam {metric}"], rows)


def _ner_metrics(metrics: dict) -> list[str]:
    """A tagger's card: entity-level micro P/R/F1 and macro F1 (CoNLL convention)."""
    lines = ["## Exam metrics", "", "Entity-level precision, recall and F1 (exact span and type) on the "
             "held-out sentences of every batch so far.", ""]
    parts = [("**overall**", metrics.get("overall") or {})] + sorted((metrics.get("slices") or {}).items())
    rows = [[name, s.get("rows"), s.get("precision"), s.get("recall"), s.get("f1"), s.get("macro_f1")]
            for name, s in parts if isinstance(s, dict)]
    return lines + _table(["slice", "sentences", "precision", "recall", "micro F1", "macro F1"], rows)


def _metrics(metadata: dict) -> list[str]:
    metrics = metadata.get("metrics") or {}
    if metadata.get("task") == "ner" and isinstance(metrics, dict):
        return _ner_metrics(metrics)
    lines = ["## Exam metrics", "", "Accuracy and macro-F1 on the held-out rows of every batch so far.", ""]
    if not isinstance(metrics, dict) or not metrics:
        return lines + ["No metrics recorded."]
    rows = []
    overall = metrics.get("overall")
    if isinstance(overall, dict):
        rows.append(["**overall**", overall.get("rows"), overall.get("accuracy"), overall.get("macro_f1")])
    slices = metrics.get("slices") if isinstance(metrics.get("slices"), dict) else {}
    for name, s in sorted(slices.items()):
        s = s if isinstance(s, dict) else {}
        rows.append([name, s.get("rows"), s.get("accuracy"), s.get("macro_f1")])
    return lines + _table(["slice", "rows", "accuracy", "macro-F1"], rows)


def _continual(metadata: dict) -> list[str]:
    """The accuracy matrix of the production lineage, with backward transfer and forgetting."""
    record = metadata.get("accuracy_matrix")
    if not isinstance(record, dict) or not record.get("rows"):
        return []
    batches = record.get("batches") or []
    rows = [[r.get("version") or metadata.get("version"), r.get("batch_id"), *values]
            for r, values in zip(record["rows"], record.get("accuracy") or [])]
    metric = record.get("metric")
    score = "Entity micro F1" if metric == "f1" else metric_label(metric).capitalize()
    lines = ["## Continual learning", "",
             f"{score} of each version in this model's lineage (rows, oldest first; each learned the batch "
             "named) on each batch's held-out rows (columns). A cell above the diagonal is the earlier "
             "model's score on a batch before learning it; `-` = never examined.", ""]
    lines += _table(["version", "learned", *[f"batch {i + 1}" for i in range(len(batches))]], rows)
    lines += ["", "Columns: " + ", ".join(f"batch {i + 1} = {_code(b)}" for i, b in enumerate(batches))]
    got = summary(record) or {}
    lines += ["", f"- backward transfer (BWT, Lopez-Paz & Ranzato 2017): {_cell(got.get('bwt'))}",
              f"- average forgetting (Chaudhry et al. 2018): {_cell(got.get('average_forgetting'))}"]
    forgot = got.get("slice_forgetting") or {}
    if forgot:
        lines += ["", f"Forgetting per slice (best earlier {score.lower()} minus this version's):", ""]
        lines += _table(["slice", "forgetting"], [[name, value] for name, value in sorted(forgot.items())])
    return lines


def _gate(metadata: dict) -> list[str]:
    gate = metadata.get("gate")
    checks = gate.get("checks") if isinstance(gate, dict) else None
    if not checks:
        return []
    rows = []
    for c in checks:
        c = c if isinstance(c, dict) else {}
        passed = c.get("passed")
        verdict = "-" if passed is None else ("pass" if passed else "FAIL")
        flips = "-" if c.get("neg_flips") is None else f"{c['neg_flips']}/{c.get('pos_flips')}"
        rows.append([c.get("name"), c.get("kind"), c.get("reference") or ("champion" if c.get("kind") in ("old_slice", "old_overall") else None), c.get("champion"),
                     c.get("candidate"), c.get("threshold"), flips, verdict + (" (low power)" if c.get("low_power") else "")])
    reasons = [f"- {_cell(r)}" for r in (gate.get("reasons") or [])]
    return (["## Promotion gate", "", "The checks this version passed against the production model it replaced "
             "(per step) and against each slice's best version in the lineage (floor); flips -/+ = rows the "
             "reference answered right and this version wrong / the reverse.", ""]
            + _table(["check", "kind", "reference", "reference score", "candidate", "threshold", "flips -/+",
                      "verdict"], rows)
            + ([""] + reasons if reasons else []))


def _usage(metadata: dict) -> list[str]:
    tag = _pipeline(metadata)
    example = MODEL_OF.get(tag, ("", '"some text"'))[1]
    if (metadata.get("train") or {}).get("stats_rows"):  # train.stats_head: the predictor is class_stats.npz
        return ["## How to use", "", "This version predicts with its class-statistics head (`class_stats.npz`, "
                "`train.stats_head`), not with the transformers `classifier` rows: load it with Ratchet's loader.",
                "", "```python", "from tasks.train.model import load_classifier",
                "from tasks.judge.evaluate import predict", "", 'clf = load_classifier("path/to/this/folder")',
                f"predict(clf, [{example}], batch_size=32, max_length=64)",
                "```"]
    return ["## How to use", "", "A plain transformers directory; no Ratchet code is needed:", "", "```python",
            "from transformers import pipeline", "", f'model = pipeline("{tag}", model="path/to/this/folder")',
            f"model({example})", "```"]


def render_card(metadata: dict, lineage: list[dict]) -> str:
    """README.md for a version. `lineage` is newest first, one dict per version with
    version, batch_id, source, created_at and accuracy (see Registry.lineage)."""
    front = "---\n" + yaml.safe_dump(FRONT_MATTER | {"pipeline_tag": _pipeline(metadata)}, sort_keys=False) + "---"
    sections = [_about(metadata, lineage), _labels(metadata), _lineage(lineage), _metrics(metadata),
                _continual(metadata), _gate(metadata), _usage(metadata)]
    return front + "\n\n" + "\n\n".join("\n".join(s) for s in sections if s) + "\n"
