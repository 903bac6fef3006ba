"""A generic text-classification task: a Hugging Face encoder directory plus labelled texts.

The model is the encoder (``AutoModel``), mean pooling over the attention mask (or the first
token), dropout and one linear head. Examples are token-id tuples; ``collate`` pads each batch
to its longest example (dynamic padding). Evaluation splits are stored sorted by token length,
so batches hold texts of similar length and padding costs little; caches key outputs by the
position in that (deterministic) order.

Two entry points:

* :func:`make_text_task` reads one CSV or JSONL file per split (``text`` and ``label`` columns);
* :func:`text_task_from_texts` takes the texts in memory (the demo task uses it).

Example of a task file for ``--task my_task.py:make_task``::

    from modelsoup.demo.text_task import make_text_task

    def make_task():
        return make_text_task(
            "models/my-encoder",
            {"train": "data/train.csv", "heldout": "data/val.csv", "test": "data/test.csv",
             "forum": "data/forum.jsonl"},
            shifts=("forum",),
        )
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelsoup.errors import TaskError
from modelsoup.evaluation.task import Split, Task

POOLINGS = ("mean", "first")


class SequenceClassifier(nn.Module):
    """An encoder, pooling over the attention mask, dropout and a linear head.

    Its ``state_dict`` holds ``encoder.*`` (the Hugging Face model's own names) and
    ``head.weight`` / ``head.bias``.

    Example:
        >>> model = SequenceClassifier.from_pretrained("models/minilm", num_labels=2)  # doctest: +SKIP
        >>> model(input_ids=ids, attention_mask=mask).shape  # doctest: +SKIP
        torch.Size([8, 2])
    """

    def __init__(
        self,
        encoder: nn.Module,
        hidden_size: int,
        num_labels: int,
        pooling: str = "mean",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise TaskError(f"unknown pooling {pooling!r} (valid: {', '.join(POOLINGS)})")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_labels)

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, num_labels: int, pooling: str = "mean", dropout: float = 0.1
    ) -> SequenceClassifier:
        """The pretrained encoder in ``model_dir`` with a freshly initialised head (offline)."""
        transformers = _transformers()
        with _quiet_transformers(transformers):
            try:
                encoder = transformers.AutoModel.from_pretrained(
                    str(model_dir), local_files_only=True
                )
            except Exception as e:
                raise TaskError(
                    f"{model_dir}: cannot load a Hugging Face encoder ({type(e).__name__}: {e})"
                ) from e
        return cls(encoder, int(encoder.config.hidden_size), num_labels, pooling, dropout)

    def get_input_embeddings(self) -> nn.Module:
        """The token-embedding module (augmentations such as mixup hook its output)."""
        return self.encoder.get_input_embeddings()

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooled representation the head reads."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        if self.pooling == "first":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(input_ids, attention_mask)))


class Tokenized:
    """Tokenizes texts and pads batches for one model directory.

    Example:
        >>> tok = Tokenized("models/minilm", max_length=64)  # doctest: +SKIP
        >>> batch = tok.collate(tok.encode(["a fine film", "dull"]))  # doctest: +SKIP
        >>> batch["input_ids"].shape  # doctest: +SKIP
        torch.Size([2, 5])
    """

    def __init__(self, model_dir: str | Path, max_length: int = 64) -> None:
        if max_length < 2:
            raise TaskError(f"max_length must be at least 2, got {max_length}")
        transformers = _transformers()
        with _quiet_transformers(transformers):
            try:
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                    str(model_dir), local_files_only=True
                )
            except Exception as e:
                raise TaskError(
                    f"{model_dir}: cannot load its tokenizer ({type(e).__name__}: {e})"
                ) from e
        self.max_length = max_length
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0

    def encode(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
        """Token ids of each text, truncated to ``max_length`` (special tokens included)."""
        if not texts:
            return []
        ids = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_length, add_special_tokens=True
        )["input_ids"]
        return [tuple(int(t) for t in row) for row in ids]

    def collate(self, examples: list[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Pad to the longest example: ``{"input_ids", "attention_mask"}`` (int64)."""
        width = max(len(e) for e in examples)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            ids[i, : len(e)] = torch.as_tensor(e, dtype=torch.long)
            mask[i, : len(e)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def text_task_from_texts(
    name: str,
    model_dir: str | Path,
    splits: Mapping[str, tuple[Sequence[str], Sequence[int]]],
    *,
    heldout: str = "heldout",
    id_test: str = "test",
    shifts: Sequence[str] = (),
    train: str | None = "train",
    num_labels: int | None = None,
    max_length: int = 64,
    pooling: str = "mean",
    dropout: float = 0.1,
    metric: Mapping[str, str] | None = None,
    batch_size: int = 64,
    sort_by_length: bool = True,
    version: str = "",
) -> Task:
    """A :class:`~modelsoup.evaluation.task.Task` over in-memory texts and integer labels.

    Args:
        name: the task name (part of cache keys).
        model_dir: a Hugging Face model directory (config, weights, tokenizer); loaded offline.
        splits: split name -> ``(texts, labels)``.
        heldout, id_test, shifts, train: the split roles (``train=None`` for none).
        num_labels: classes (default: the largest label + 1).
        max_length: tokens per text, special tokens included (longer texts are truncated).
        pooling: ``"mean"`` over the attention mask, or ``"first"`` (the [CLS] token).
        dropout: dropout before the head while training.
        metric: headline metric per split (e.g. ``{"drugs": "balanced_accuracy"}``).
        batch_size: evaluation batch size.
        sort_by_length: store evaluation splits sorted by token length (faster batches).
        version: folded into cache keys.

    Example:
        >>> task = text_task_from_texts("reviews", "models/minilm", {
        ...     "train": (["good", "bad"], [1, 0]), "heldout": (["fine"], [1]),
        ...     "test": (["awful"], [0])})  # doctest: +SKIP
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise TaskError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    if num_labels is None:
        num_labels = 1 + max(
            (max(labels) for _, labels in splits.values() if len(labels)), default=1
        )
    tok = Tokenized(model_dir, max_length)
    built: dict[str, Split] = {}
    for split_name, (texts, labels) in splits.items():
        ids = tok.encode(list(texts))
        labels = list(labels)
        if sort_by_length and split_name != train:
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            ids, labels = [ids[i] for i in order], [labels[i] for i in order]
        built[split_name] = Split(split_name, examples=ids, labels=labels)
    config_hash = hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest()[:16]

    def build_model() -> nn.Module:
        return SequenceClassifier.from_pretrained(model_dir, num_labels, pooling, dropout)

    return Task(
        name=name,
        build_model=build_model,
        splits=built,
        heldout=heldout,
        id_test=id_test,
        shifts=tuple(shifts),
        num_classes=num_labels,
        train=train,
        collate=tok.collate,
        metric=dict(metric or {}),
        batch_size=batch_size,
        version=f"{version}|text|{config_hash}|{pooling}|{max_length}",
    )


def make_text_task(
    model_dir: str | Path,
    files: Mapping[str, str | Path],
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    name: str = "text",
    **options: Any,
) -> Task:
    """A text-classification task from one CSV or JSONL file per split.

    Labels may be integers or strings; strings are mapped through ``label_names`` (their
    position is the class index) or, if not given, through the sorted set of all labels seen.
    Other options are those of :func:`text_task_from_texts`.

    Raises:
        TaskError: naming the file and line of a missing column or an unknown label.

    Example:
        >>> task = make_text_task("models/minilm", {"train": "train.csv",
        ...     "heldout": "val.csv", "test": "test.jsonl"})  # doctest: +SKIP
    """
    raw = {
        split: list(_read_rows(Path(path), text_column, label_column))
        for split, path in files.items()
    }
    values = [label for rows in raw.values() for _, label, _ in rows]
    if label_names is None and all(_is_int(v) for v in values):
        mapping = None
    else:
        names = list(label_names) if label_names is not None else sorted({str(v) for v in values})
        mapping = {n: i for i, n in enumerate(names)}
        options.setdefault("num_labels", len(names))
    splits: dict[str, tuple[list[str], list[int]]] = {}
    for split, rows in raw.items():
        texts, labels = [], []
        for text, label, where in rows:
            if mapping is None:
                labels.append(int(label))
            else:
                if str(label) not in mapping:
                    raise TaskError(f"{where}: label {label!r} is not one of {', '.join(mapping)}")
                labels.append(mapping[str(label)])
            texts.append(text)
        splits[split] = (texts, labels)
    return text_task_from_texts(name, model_dir, splits, **options)


def _read_rows(path: Path, text_column: str, label_column: str) -> Iterator[tuple[str, Any, str]]:
    if not path.is_file():
        raise TaskError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".tsv"):
        raise TaskError(f"{path}: unknown data format (expected .csv, .tsv or .jsonl)")
    with path.open(encoding="utf-8", newline="") as f:
        if suffix == ".jsonl":
            records: Iterator[tuple[int, Any]] = (
                (n, _json_line(line, path, n)) for n, line in enumerate(f, 1) if line.strip()
            )
        else:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            records = ((n, row) for n, row in enumerate(reader, 2))
        for n, row in records:
            where = f"{path}:{n}"
            if not isinstance(row, dict) or text_column not in row or label_column not in row:
                raise TaskError(f"{where}: needs the columns {text_column!r} and {label_column!r}")
            yield str(row[text_column]), row[label_column], where


def _json_line(line: str, path: Path, n: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}:{n}: not valid JSON ({e.msg})") from None


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise TaskError(
            "text tasks need transformers; install it with: pip install 'modelsoup[hf]'"
        ) from None
    return transformers


@contextlib.contextmanager
def _quiet_transformers(transformers: Any) -> Iterator[None]:
    """Silence transformers' load-time warnings (e.g. about a new head) for the duration."""
    logging = transformers.utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
