"""Task types (`task.type`): the plug-in contract is tasks/kinds/base.py."""

from tasks.kinds.base import KINDS, TaskKind, get_kind, register
from tasks.kinds.classification import CLASSIFICATION
from tasks.kinds.ner import NER

__all__ = ["CLASSIFICATION", "KINDS", "NER", "TaskKind", "get_kind", "register"]
