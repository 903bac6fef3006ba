"""The generic text-classification task, on a tiny BERT with the real MiniLM tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from modelsoup.demo.text_task import SequenceClassifier, make_text_task, text_task_from_texts
from modelsoup.errors import TaskError
from modelsoup.evaluation.evaluator import Evaluator

TEXTS = {
    "train": (["a fine film", "dull and slow", "great fun", "awful"], [1, 0, 1, 0]),
    "heldout": (["lovely", "a tedious, overlong and plodding mess of a movie"], [1, 0]),
    "test": (["wonderful acting throughout the whole film", "bad", "good"], [1, 0, 1]),
    "forum": (["meh", "i loved every minute of it"], [0, 1]),
}


def test_tokenize_sort_and_collate(tiny_bert_dir: Path) -> None:
    task = text_task_from_texts("t", tiny_bert_dir, TEXTS, shifts=("forum",), max_length=8)
    assert task.num_classes == 2 and task.shifts == ("forum",)
    test = task.split("test")
    lengths = [len(e) for e in test.examples]
    assert lengths == sorted(lengths)  # evaluation splits are sorted by length ...
    assert test.labels.tolist() == [0, 1, 1]  # ... and their labels follow
    assert max(lengths) == 8  # truncated to max_length, special tokens included
    assert [len(e) for e in task.split("train").examples] != sorted(  # train keeps its order
        len(e) for e in task.split("train").examples
    ) or task.split("train").labels.tolist() == [1, 0, 1, 0]
    assert test.examples[0][0] == 101 and test.examples[0][-1] == 102  # [CLS] ... [SEP]
    batch = task.collate(list(test.examples))
    assert batch["input_ids"].shape == (3, 8)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()  # padded with [PAD]


def test_model_forward_and_padding_invariance(tiny_bert_dir: Path) -> None:
    task = text_task_from_texts("t", tiny_bert_dir, TEXTS)
    torch.manual_seed(0)
    model = task.build_model().eval()
    assert isinstance(model, SequenceClassifier)
    keys = model.state_dict().keys()
    assert {"head.weight", "head.bias"} <= set(keys)
    assert all(k.startswith(("encoder.", "head.")) for k in keys)
    examples = list(task.split("test").examples)
    with torch.no_grad():
        together = task.forward(model, task.collate(examples))
        alone = torch.cat([task.forward(model, task.collate([e])) for e in examples])
    assert together.shape == (3, 2)
    # Mean pooling over the mask: padding does not change a text's logits.
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_evaluator_runs_the_text_task(tiny_bert_dir: Path, tmp_path: Path) -> None:
    task = text_task_from_texts("t", tiny_bert_dir, TEXTS, shifts=("forum",))
    torch.manual_seed(0)
    state = task.build_model().state_dict()
    ev = Evaluator(task, cache_dir=tmp_path / "cache", progress=False)
    logits = ev.logits(("tiny", state), "test")
    assert logits.shape == (3, 2)
    again = Evaluator(task, cache_dir=tmp_path / "cache", progress=False)
    torch.testing.assert_close(again.logits(("tiny", state), "test"), logits)
    assert again.stats.forward_examples == 0


def test_make_text_task_from_csv_and_jsonl(tiny_bert_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text('text,label\n"good, really",pos\nbad,neg\nok,pos\n')
    (tmp_path / "val.tsv").write_text("text\tlabel\nfine\tpos\nworse\tneg\n")
    (tmp_path / "test.jsonl").write_text(
        "\n".join(
            json.dumps({"text": t, "label": lab}) for t, lab in [("nice", "pos"), ("no", "neg")]
        )
    )
    task = make_text_task(
        tiny_bert_dir,
        {
            "train": tmp_path / "train.csv",
            "heldout": tmp_path / "val.tsv",
            "test": tmp_path / "test.jsonl",
        },
        label_names=("neg", "pos"),
    )
    assert task.split("train").labels.tolist() == [1, 0, 1]
    assert sorted(task.split("test").labels.tolist()) == [0, 1]
    # Integer labels need no names.
    (tmp_path / "ints.csv").write_text("text,label\na,0\nb,2\n")
    t2 = make_text_task(
        tiny_bert_dir, {"heldout": tmp_path / "ints.csv", "test": tmp_path / "ints.csv"}, train=None
    )
    assert t2.num_classes == 3


def test_text_task_errors_name_the_file(tiny_bert_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("sentence,label\nhi,1\n")
    with pytest.raises(TaskError, match=r"bad\.csv:2: needs the columns 'text' and 'label'"):
        make_text_task(tiny_bert_dir, {"test": tmp_path / "bad.csv"})
    (tmp_path / "lab.csv").write_text("text,label\nhi,maybe\n")
    with pytest.raises(TaskError, match=r"lab\.csv:2: label 'maybe' is not one of neg, pos"):
        make_text_task(tiny_bert_dir, {"test": tmp_path / "lab.csv"}, label_names=("neg", "pos"))
    with pytest.raises(TaskError, match="no such data file"):
        make_text_task(tiny_bert_dir, {"test": tmp_path / "missing.csv"})
    with pytest.raises(TaskError, match="not a Hugging Face model directory"):
        text_task_from_texts("t", tmp_path, TEXTS)
