"""The MLflow model of a version whose predictor is not its transformers pipeline: a
class-statistics version (`train.stats_head`), whose `classifier` rows are not what it
answers with. Logged as a pyfunc that loads the version with Ratchet's own loader
(`load_classifier`, which wraps the statistics head) and answers like the exam does: one
row per input text, the top label and its probability (the columns the
`mlflow.transformers` text-classification model returns). Ratchet's `tasks` package
travels with the model (MLflow's `code_paths`), so it loads wherever torch and
transformers are installed.
"""

from __future__ import annotations

import mlflow.pyfunc

MODEL_ARTIFACT = "version"  # the Ratchet version directory, as an MLflow artifact


class RatchetClassifier(mlflow.pyfunc.PythonModel):
    """predict(texts | DataFrame with a `text` column or one column) -> DataFrame(label, score)."""

    def __init__(self, batch_size: int = 64, max_length: int = 128):
        self.batch_size, self.max_length = batch_size, max_length

    def load_context(self, context) -> None:
        from tasks.train.model import load_classifier

        self.clf = load_classifier(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch

        from tasks.train.model import top_answers

        if isinstance(model_input, pd.DataFrame):
            column = "text" if "text" in model_input.columns else model_input.columns[0]
            texts = model_input[column].astype(str).tolist()
        else:
            texts = [str(t) for t in (model_input if isinstance(model_input, (list, tuple)) else list(model_input))]
        with torch.inference_mode():  # as the exam reads it (tasks/judge/evaluate.py predict_scored)
            best, prob = top_answers(self.clf.model.text_logits(self.clf.tokenizer, texts, max_length=self.max_length,
                                                                batch_size=self.batch_size))
        labels = self.clf.labels
        return pd.DataFrame({"label": [labels[i] for i in best], "score": prob})
