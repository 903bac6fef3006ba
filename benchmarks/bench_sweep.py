"""Sweep training-step throughput: ``modelsoup.demo.sweep.train_trial`` against a bare PyTorch
loop (AdamW, cross-entropy, backward, step) on the same model, the same batches and the same
trainable parameters, interleaved in one process.

The full run uses the demo's real model (all-MiniLM-L6-v2, batch 32 x up to 64 tokens); ``--quick``
a 2-layer BERT with MiniLM's tokenizer. Run alone: ``python benchmarks/bench_sweep.py [--quick]``.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, THREADS, Table, bench_dir, cli, log, run  # noqa: E402

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)

PROSE = """
One fine-tuning run of the sweep (`train_trial`: AdamW with warm-up and decay, gradient
clipping, loss curve, progress) against a bare PyTorch loop doing the same forward, loss,
backward and optimizer step on the same model and batches.
"""


def tiny_bert(minilm: Path) -> Path:
    """A 2-layer, hidden-128 BERT with MiniLM's tokenizer (for --quick)."""
    import torch
    import transformers

    out = bench_dir() / "tiny-bert"
    if (out / "config.json").is_file():
        return out
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (minilm / name).is_file():
            shutil.copy(minilm / name, out / name)
    return out


class _Clock:
    """A stand-in progress bar: train_trial calls update(1) after every optimizer step."""

    def __init__(self) -> None:
        self.times = [time.perf_counter()]

    def update(self, n: int) -> None:
        self.times.append(time.perf_counter())

    def set_postfix(self, *args, **kwargs) -> None:
        pass


def worker(quick: bool, steps: int, repeats: int) -> dict:
    import torch
    from torch.nn import functional as F

    torch.set_num_threads(THREADS)

    from modelsoup.demo.demo_task import make_task, minilm_dir
    from modelsoup.demo.sweep import SweepOptions, batch_indices, sample_hparams, train_trial

    minilm = minilm_dir()
    model_dir = tiny_bert(minilm) if quick else minilm
    task = make_task("smoke", model_dir=model_dir)
    options = SweepOptions(trials=1)
    hp = {**sample_hparams(options, 0), "augmentation": "none", "label_smoothing": 0.0}
    plan = {"hparams": hp, "steps": steps}
    init = {k: v.clone() for k, v in task.build_model().state_dict().items()}
    train = task.split(task.train or "train")
    skip = 1  # the first step pays one-time costs (allocations, lazy init)

    def ours() -> float:
        clock = _Clock()
        train_trial(task, init, options, plan, bar=clock)
        return clock.times[-1] - clock.times[1 + skip - 1]

    def bare() -> float:
        torch.manual_seed(hp["torch_seed"])
        model = task.build_model()
        model.load_state_dict(init)
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp["weight_decay"]},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=hp["lr"],
        )  # fmt: skip
        model.train()
        times = [time.perf_counter()]
        for idx in batch_indices(train.examples, options.batch_size, steps, hp["data_seed"]):
            batch = task.collate([train.examples[i] for i in idx])
            loss = F.cross_entropy(task.forward(model, batch), train.labels[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter())
        return times[-1] - times[skip]

    t_ours, t_bare = [], []
    for _ in range(repeats):
        t_bare.append(bare())
        t_ours.append(ours())
    params = sum(t.numel() for t in init.values())
    return {
        "model": model_dir.name if quick else "all-MiniLM-L6-v2",
        "params": params,
        "batch": options.batch_size,
        "steps_timed": steps - skip,
        "ours_s": statistics.median(t_ours),
        "bare_s": statistics.median(t_bare),
        "ours_all": t_ours,
        "bare_all": t_bare,
        "threads": torch.get_num_threads(),
    }


def bench(quick: bool = False, repeats: int = 3) -> list[Table]:
    steps = 6
    log(f"sweep training-step throughput ({'tiny BERT' if quick else 'MiniLM'})")
    res = run([PYTHON, __file__, "worker", "1" if quick else "0", str(steps), str(repeats)]).json()
    n = res["steps_timed"]
    ratio = res["bare_s"] / res["ours_s"]
    table = Table(
        "sweep_step_throughput",
        "Sweep training steps: train_trial vs a bare PyTorch loop",
        ["loop", "model", "parameters", "batch", "s per step", "steps/s", "x bare loop"],
        [
            ["bare loop (AdamW, CE, backward, step)", res["model"], res["params"], res["batch"],
             res["bare_s"] / n, n / res["bare_s"], 1.0],
            ["modelsoup train_trial", res["model"], res["params"], res["batch"],
             res["ours_s"] / n, n / res["ours_s"], ratio],
        ],  # fmt: skip
        notes=(
            f"The demo's smoke-size training split, the same batches (the sweep's length-"
            f"bucketed order), no augmentation or label smoothing; {n} timed steps after one "
            f"warm-up step, median of {repeats} interleaved runs, {res['threads']} torch "
            "threads. train_trial adds gradient clipping, the learning-rate schedule and a "
            "loss read-back per step."
        ),
        targets=[("training-step throughput >= 0.9x the bare loop", f"{ratio:.2f}x",
                  ratio >= 0.9)],
    )  # fmt: skip
    return [table]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        print(json.dumps(worker(argv[1] == "1", int(argv[2]), int(argv[3]))))
        return
    cli(__doc__, bench, argv)


if __name__ == "__main__":
    main()
