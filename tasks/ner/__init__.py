"""The NER path (task.type: ner): CoNLL/JSONL/Parquet sentences with IOB2 tags through
validate, drift, fine-tune, evaluate and gate; composed by flows/retrain_ner.py."""
