"""Shared benchmark helpers: generated checkpoints, timed subprocesses, peak RSS, tables.

The orchestrating process never imports torch: every measured configuration runs in a fresh
child process (``python bench_x.py worker ...``), and its wall time and peak resident set size
come from ``os.wait4`` on that one child (``ru_maxrss``), so no measurement inherits another's
memory. Generated data lives outside the repository, in ``$MODELSOUP_BENCH_DIR`` (default
``/tmp/modelsoup-bench``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
PYTHON = sys.executable
MODELSOUP = str(Path(PYTHON).with_name("modelsoup"))
MB = 1e6
#: torch intra-op threads in the throughput workers (both sides of every ratio alike). The
#: machine is shared: a two-thread op waits for whichever thread the scheduler preempted, which
#: makes two-thread timings swing by 5x under load. Override with MODELSOUP_BENCH_THREADS.
THREADS = int(os.environ.get("MODELSOUP_BENCH_THREADS", "1"))
GB = 1e9


def bench_dir() -> Path:
    """Scratch space for generated data, venvs and outputs (never inside the repository)."""
    d = Path(os.environ.get("MODELSOUP_BENCH_DIR", "/tmp/modelsoup-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Generated checkpoints: BERT-shaped Hugging Face directories (realistic layer shapes)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BertSpec:
    """A BERT-like encoder with a classification head; ``full()`` is ~102M parameters."""

    hidden: int = 768
    layers: int = 11
    intermediate: int = 3072
    vocab: int = 30522
    positions: int = 512
    labels: int = 2

    @classmethod
    def full(cls) -> BertSpec:
        return cls()

    @classmethod
    def quick(cls) -> BertSpec:
        return cls(hidden=256, layers=4, intermediate=1024, vocab=8000, positions=256)

    def tensors(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(name, shape, dtype) in Hugging Face ``BertForSequenceClassification`` naming."""
        h, i = self.hidden, self.intermediate
        out: list[tuple[str, tuple[int, ...], str]] = [
            ("bert.embeddings.word_embeddings.weight", (self.vocab, h), "F32"),
            ("bert.embeddings.position_embeddings.weight", (self.positions, h), "F32"),
            ("bert.embeddings.token_type_embeddings.weight", (2, h), "F32"),
            ("bert.embeddings.LayerNorm.weight", (h,), "F32"),
            ("bert.embeddings.LayerNorm.bias", (h,), "F32"),
            ("bert.embeddings.position_ids", (1, self.positions), "I64"),
        ]
        for n in range(self.layers):
            p = f"bert.encoder.layer.{n}."
            for proj in ("query", "key", "value"):
                out += [
                    (f"{p}attention.self.{proj}.weight", (h, h), "F32"),
                    (f"{p}attention.self.{proj}.bias", (h,), "F32"),
                ]
            out += [
                (f"{p}attention.output.dense.weight", (h, h), "F32"),
                (f"{p}attention.output.dense.bias", (h,), "F32"),
                (f"{p}attention.output.LayerNorm.weight", (h,), "F32"),
                (f"{p}attention.output.LayerNorm.bias", (h,), "F32"),
                (f"{p}intermediate.dense.weight", (i, h), "F32"),
                (f"{p}intermediate.dense.bias", (i,), "F32"),
                (f"{p}output.dense.weight", (h, i), "F32"),
                (f"{p}output.dense.bias", (h,), "F32"),
                (f"{p}output.LayerNorm.weight", (h,), "F32"),
                (f"{p}output.LayerNorm.bias", (h,), "F32"),
            ]
        out += [
            ("bert.pooler.dense.weight", (h, h), "F32"),
            ("bert.pooler.dense.bias", (h,), "F32"),
            ("classifier.weight", (self.labels, h), "F32"),
            ("classifier.bias", (self.labels,), "F32"),
        ]
        return out

    @property
    def parameters(self) -> int:
        total = 0
        for _, shape, dtype in self.tensors():
            if dtype == "F32":
                n = 1
                for d in shape:
                    n *= d
                total += n
        return total

    @property
    def nbytes(self) -> int:
        total = 0
        for _, shape, dtype in self.tensors():
            n = 8 if dtype == "I64" else 4
            for d in shape:
                n *= d
            total += n
        return total

    def config(self) -> dict[str, Any]:
        return {
            "architectures": ["BertForSequenceClassification"],
            "model_type": "bert",
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": max(1, self.hidden // 64),
            "intermediate_size": self.intermediate,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.positions,
            "type_vocab_size": 2,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-12,
            "num_labels": self.labels,
            "torch_dtype": "float32",
        }

    def tag(self) -> str:
        return f"bert_h{self.hidden}_l{self.layers}_i{self.intermediate}_v{self.vocab}"


GENERATE = r"""
import json, sys, torch
from safetensors.torch import save_file
spec = json.loads(sys.argv[1])
for path, seed in zip(sys.argv[2::2], sys.argv[3::2]):
    g = torch.Generator().manual_seed(int(seed))
    sd = {}
    for name, shape, dtype in spec:
        if dtype == "I64":
            sd[name] = torch.arange(shape[-1]).reshape(shape)
        else:
            sd[name] = torch.randn(shape, generator=g) * 0.02
    save_file(sd, path, metadata={"format": "pt"})
"""


def make_checkpoints(spec: BertSpec, k: int, *, pt: int = 0) -> list[Path]:
    """``k`` Hugging Face directories (``ing_XX/model.safetensors`` + ``config.json``).

    Reused across runs when already generated; written by a child process (torch stays out of
    the orchestrator). The first ``pt`` also get a ``weights.pt`` copy for ``torch.load``.
    """
    root = bench_dir() / "checkpoints" / spec.tag()
    dirs = [root / f"ing_{i:02d}" for i in range(k)]
    todo: list[str] = []
    for i, d in enumerate(dirs):
        weights = d / "model.safetensors"
        if not (weights.is_file() and weights.stat().st_size >= spec.nbytes):
            d.mkdir(parents=True, exist_ok=True)
            (d / "config.json").write_text(json.dumps(spec.config(), indent=2))
            todo += [str(weights), str(1000 + i)]
    if todo:
        log(f"generating {len(todo) // 2} checkpoints of {spec.parameters / 1e6:.0f}M parameters")
        subprocess.run(
            [PYTHON, "-c", GENERATE, json.dumps(spec.tensors()), *todo], check=True, cwd=root
        )
    if pt:
        convert = (
            "import sys, torch\nfrom safetensors.torch import load_file\n"
            "for a in sys.argv[1:]:\n"
            "    torch.save(load_file(a + '/model.safetensors'), a + '/weights.pt')\n"
        )
        missing = [str(d) for d in dirs[:pt] if not (d / "weights.pt").is_file()]
        if missing:
            log(f"writing {len(missing)} .pt copies for the torch.load baseline")
            subprocess.run([PYTHON, "-c", convert, *missing], check=True)
    return dirs


def warm(paths: Sequence[Path | str]) -> None:
    """Flush other runs' dirty pages, then read ``paths`` once so the page cache holds them.

    The flush matters: a configuration that fsyncs (modelsoup) would otherwise also wait for
    the previous configuration's unsynced output to reach the disk.
    """
    os.sync()
    buf = bytearray(16 * 2**20)
    view = memoryview(buf)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(view):
                pass


# ---------------------------------------------------------------------------------------------
# Timed child processes
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One child process: wall seconds, peak RSS bytes, CPU seconds (user + system, all its
    threads), exit code, what it printed."""

    wall: float
    rss: int
    code: int
    stdout: str
    stderr: str
    cpu: float = 0.0

    def json(self) -> dict[str, Any]:
        """The last line of stdout that parses as a JSON object (workers report there)."""
        for line in reversed(self.stdout.strip().splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except ValueError:
                    continue
        return {}


def run(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float = 3600,
) -> Run:
    """Run ``cmd`` in a fresh process; wall time and that child's own peak RSS (``wait4``)."""
    full_env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=full_env, cwd=cwd)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = Run(
            wall,
            usage.ru_maxrss * 1024,
            proc.returncode,
            out.read(),
            err.read(),
            usage.ru_utime + usage.ru_stime,
        )
    if check and result.code != 0:
        raise RuntimeError(
            f"benchmark command failed ({result.code}): {' '.join(map(str, cmd))}\n"
            f"{result.stderr[-3000:]}"
        )
    return result


@dataclass
class Stat:
    """Median of repeated runs, with the spread kept for the record."""

    walls: list[float] = field(default_factory=list)
    rsss: list[int] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)

    @property
    def rss(self) -> int:
        return int(statistics.median(self.rsss))

    def median_of(self, key: str) -> float | None:
        vals = [e[key] for e in self.extra if isinstance(e.get(key), int | float)]
        return statistics.median(vals) if vals else None


def interleaved(
    configs: dict[str, Callable[[], Run]],
    repeats: int,
    *,
    before: Callable[[str], None] | None = None,
) -> dict[str, Stat]:
    """Run every configuration ``repeats`` times, interleaved (A B C A B C ...), so that load
    from other processes on this shared machine hits all of them alike; medians per config."""
    stats = {name: Stat() for name in configs}
    for r in range(repeats):
        for name, fn in configs.items():
            if before is not None:
                before(name)
            res = fn()
            stats[name].walls.append(res.wall)
            stats[name].rsss.append(res.rss)
            stats[name].cpus.append(res.cpu)
            stats[name].extra.append(res.json())
            log(f"  {name} #{r + 1}: {res.wall:.2f} s, cpu {res.cpu:.2f} s, {res.rss / MB:.0f} MB")
    return stats


# ---------------------------------------------------------------------------------------------
# Results: tables for docs/benchmarks.md and CSVs
# ---------------------------------------------------------------------------------------------


@dataclass
class Table:
    """One results table: a title, an explanation, column names, rows, and verdicts."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    notes: str = ""
    targets: list[tuple[str, str, bool | None]] = field(default_factory=list)

    def write_csv(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.key}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            for row in self.rows:
                w.writerow([_plain(x) for x in row])
        return path

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        if self.notes:
            lines += [self.notes.strip(), ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join(" --- " for _ in self.columns) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(_fmt(x) for x in row) + " |")
        if self.targets:
            lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
            for target, measured, met in self.targets:
                verdict = "n/a" if met is None else ("yes" if met else "**no**")
                lines.append(f"| {target} | {measured} | {verdict} |")
        return "\n".join(lines) + "\n"


def _plain(x: Any) -> Any:
    if isinstance(x, float):
        return f"{x:.4g}"
    return x


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if abs(x) >= 100:
            return f"{x:,.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.2f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """nproc, RAM, CPU model, OS, Python and package versions (without importing them)."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "nproc": str(os.cpu_count()),
        "ram": ram,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    for pkg in ("modelsoup", "torch", "safetensors", "numpy", "transformers"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = "not installed"
    with contextlib.suppress(OSError):
        info["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    return info


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def cli(doc: str, bench: Callable[[bool, int], Iterable[Table]], argv: list[str]) -> None:
    """The benchmarks' shared command line: ``[--quick] [--repeats N]``; print and save tables."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per case")
    args = parser.parse_args(argv)
    for table in bench(args.quick, args.repeats):
        table.write_csv()
        print(table.markdown())
