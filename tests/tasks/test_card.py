"""Model card: Hugging Face README.md shape, lineage, metrics and gate from metadata, and
no crash on the sparse or odd metadata that older versions and audits carry."""

from __future__ import annotations

import yaml

from tasks.registry.card import render_card

GATE = {"promote": True, "reasons": ["all 3 checks passed"], "checks": [
    {"name": "slice:banking", "kind": "old_slice", "champion": 0.958, "candidate": 0.951, "threshold": 0.938,
     "passed": True},
    {"name": "old exam overall", "kind": "old_overall", "champion": 0.958, "candidate": 0.951, "threshold": 0.938,
     "passed": True, "p_value": 0.31},  # extra keys from a future gate are ignored
    {"name": "new batch held-out", "kind": "new_batch", "champion": None, "candidate": 0.949, "threshold": 0.5,
     "passed": True},
]}
METADATA = {
    "version": "v0002", "parent": "v0001", "batch_ids": ["b-1", "b-2"], "batch_id": "b-2",
    "source": "data/landing/02_credit_cards.csv", "created_at": "2025-01-02T10:00:00+00:00",
    "params": {"model": {"base": "minilm"}}, "params_hash": "abc123", "git_rev": "deadbeef",
    "weights_sha256": "f" * 64, "labels": ["freeze_account", "card|declined"],
    "metrics": {"overall": {"rows": 900, "accuracy": 0.95, "macro_f1": 0.9412},
                "slices": {"credit_cards": {"rows": 450, "accuracy": 0.949, "macro_f1": 0.94},
                           "banking": {"rows": 450, "accuracy": 0.951, "macro_f1": 0.95}}},
    "gate": GATE,
}
LINEAGE = [
    {"version": "v0002", "batch_id": "b-2", "source": "02_credit_cards.csv", "created_at": "2025-01-02", "accuracy": 0.95},
    {"version": "v0001", "batch_id": "b-1", "source": "01_banking.csv", "created_at": "2025-01-01", "accuracy": 0.958},
]


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_front_matter_is_hugging_face_metadata():
    meta = front_matter(render_card(METADATA, LINEAGE))
    assert meta == {"library_name": "transformers", "pipeline_tag": "text-classification", "tags": ["ratchet"]}


def test_card_says_what_the_model_is_and_how_to_load_it():
    card = render_card(METADATA, LINEAGE)
    assert "# Ratchet model v0002" in card
    assert "base encoder: `minilm`" in card and "parent version: `v0001`" in card and "batches learned: `2`" in card
    assert "f" * 64 in card and "deadbeef" in card
    assert 'pipeline("text-classification", model=' in card


def test_a_taggers_card_says_tagger_and_loads_it_as_token_classification():
    card = render_card({**METADATA, "task": "ner", "metric": "f1", "pipeline_tag": "token-classification",
                        "metrics": {"overall": {"f1": 0.8}, "slices": {}}}, LINEAGE)
    assert front_matter(card)["pipeline_tag"] == "token-classification"
    assert "A named-entity tagger trained continually" in card and 'pipeline("token-classification", model=' in card


def test_labels_are_listed_and_escaped():
    card = render_card(METADATA, LINEAGE)
    assert "2 labels" in card and "`freeze_account`" in card and "`card|declined`" in card


def test_lineage_table_goes_back_to_the_first_batch():
    card = render_card(METADATA, LINEAGE)
    assert "| v0002 | b-2 | 02_credit_cards.csv | 2025-01-02 | 0.9500 |" in card
    assert "| v0001 | b-1 | 01_banking.csv | 2025-01-01 | 0.9580 |" in card
    assert card.index("| v0002 | b-2") < card.index("| v0001 | b-1")


def test_exam_metrics_per_slice():
    card = render_card(METADATA, LINEAGE)
    assert "| **overall** | 900 | 0.9500 | 0.9412 |" in card
    assert "| banking | 450 | 0.9510 | 0.9500 |" in card
    assert "| credit_cards | 450 | 0.9490 | 0.9400 |" in card


def test_gate_table_when_checks_exist():
    card = render_card(METADATA, LINEAGE)
    assert "## Promotion gate" in card
    assert "| slice:banking | old_slice | champion | 0.9580 | 0.9510 | 0.9380 | - | pass |" in card
    assert "| new batch held-out | new_batch | - | - | 0.9490 | 0.5000 | - | pass |" in card
    assert "- all 3 checks passed" in card
    assert "## Promotion gate" not in render_card({**METADATA, "gate": {"checks": []}}, LINEAGE)
    assert "## Promotion gate" not in render_card({**METADATA, "gate": None}, LINEAGE)


def test_rows_never_break_the_markdown_table():
    card = render_card({**METADATA, "source": "a|b\nc"}, [{**LINEAGE[0], "source": "a|b\nc"}])
    table = [line for line in card.splitlines() if line.startswith("| v000")]
    assert all(line.replace("\\|", "").count("|") == 6 for line in table)


def test_sparse_and_odd_metadata_still_render():
    card = render_card({}, [])
    front_matter(card)
    assert "# Ratchet model unversioned" in card and "No lineage recorded." in card and "No metrics recorded." in card
    odd = {"version": "v0009", "metrics": {"overall": "n/a", "slices": {"x": None}},
           "gate": {"checks": [{"name": "weird"}, "not a dict", {"passed": False, "candidate": "0.5"}]}}
    card = render_card(odd, [{"version": "v0009"}])
    assert "| weird | - | - | - | - | - | - | - |" in card and "FAIL" in card and "| x | - | - | - |" in card


def test_continual_learning_section_from_the_accuracy_matrix():
    record = {"batches": ["b-1", "b-2"], "rows": [{"version": "v0001", "batch_id": "b-1"},
                                                   {"version": "v0002", "batch_id": "b-2"}],
              "accuracy": [[0.958, 0.0], [0.951, 0.949]], "slices": ["banking", "credit_cards"],
              "slice_accuracy": [[0.958, None], [0.951, 0.949]]}
    card = render_card({**METADATA, "accuracy_matrix": record}, LINEAGE)
    assert "## Continual learning" in card
    assert "| version | learned | batch 1 | batch 2 |" in card
    assert "| v0001 | b-1 | 0.9580 | 0.0000 |" in card and "| v0002 | b-2 | 0.9510 | 0.9490 |" in card
    assert "backward transfer (BWT, Lopez-Paz & Ranzato 2017): 0.0070" not in card  # it is a drop
    assert "BWT, Lopez-Paz & Ranzato 2017): -0.0070" in card
    assert "average forgetting (Chaudhry et al. 2018): 0.0070" in card
    assert "| banking | 0.0070 |" in card
    assert "## Continual learning" not in render_card(METADATA, LINEAGE)
    unnamed = {**record, "rows": [record["rows"][0], {"version": None, "batch_id": "b-2"}]}
    assert "| v0002 | b-2 |" in render_card({**METADATA, "accuracy_matrix": unnamed}, LINEAGE)
