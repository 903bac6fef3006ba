"""Cold start: ``modelsoup --help`` and ``modelsoup inspect`` must not import torch.

Each command runs in a fresh process, timed against ``python -c pass`` and
``python -c "import torch"``; ``python -X importtime`` tells which heavy modules each imports.

Run alone: ``python benchmarks/bench_coldstart.py [--quick]``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    MODELSOUP,
    PYTHON,
    BertSpec,
    Table,
    bench_dir,
    cli,
    interleaved,
    log,
    make_checkpoints,
    run,
)

HEAVY = ("torch", "numpy", "safetensors", "pydantic", "tqdm", "transformers", "scipy", "pandas")

PROSE = """
`modelsoup --help`, `--version` and `inspect` must start fast: the CLI is a lazy click group
(a command's module is imported only when it runs), the package `__init__` resolves names
lazily, and `inspect` reads safetensors headers with our own parser (no torch, no safetensors
library) and digests from the on-disk cache. Commands that build flags from the recipe
registry (`recipes`, `cook`) import torch, as they need it anyway.
"""


def imported(cmd: list[str], env: dict[str, str]) -> list[str]:
    """Top-level packages among HEAVY that ``cmd`` (a python script + args) imports."""
    done = subprocess.run(
        [PYTHON, "-X", "importtime", *cmd], capture_output=True, text=True, env=env
    )
    seen = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip().split(".")[0]
            if name in HEAVY:
                seen.add(name)
    return sorted(seen)


def bench(quick: bool = False, repeats: int = 3) -> list[Table]:
    ckpt = make_checkpoints(BertSpec.quick(), 2)
    cache = bench_dir() / "cache-coldstart"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "MODELSOUP_CACHE_DIR": str(cache)}
    envd = {"MODELSOUP_CACHE_DIR": str(cache)}
    inspect_args = ["inspect", *(str(d / "model.safetensors") for d in ckpt)]
    run([MODELSOUP, *inspect_args], env=envd)  # fill the digest cache: time the reading only
    commands = {
        "python -c pass": [PYTHON, "-c", "pass"],
        'python -c "import torch"': [PYTHON, "-c", "import torch"],
        "modelsoup --help": [MODELSOUP, "--help"],
        "modelsoup --version": [MODELSOUP, "--version"],
        "modelsoup inspect (2 files)": [MODELSOUP, *inspect_args],
        "modelsoup recipes": [MODELSOUP, "recipes"],
        "modelsoup cook --help": [MODELSOUP, "cook", "--help"],
    }
    reps = max(5, 2 * repeats)
    log(f"cold start, {reps} interleaved repeats")
    stats = interleaved({k: (lambda c=c: run(c, env=envd)) for k, c in commands.items()}, reps)
    base, torch_t = stats["python -c pass"].wall, stats['python -c "import torch"'].wall
    rows = []
    heavy: dict[str, list[str]] = {}
    for name, cmd in commands.items():
        script = cmd[1:] if cmd[0] == PYTHON else [cmd[0], *cmd[1:]]
        heavy[name] = imported(script, env)
        st = stats[name]
        rows.append(
            [name, st.wall, st.wall / base, st.wall / torch_t, st.rss / 1e6,
             "yes" if "torch" in heavy[name] else "no", ", ".join(heavy[name]) or "–"]
        )  # fmt: skip
    needs = ("modelsoup --help", "modelsoup --version", "modelsoup inspect (2 files)")
    clean = all("torch" not in heavy[n] for n in needs)
    table = Table(
        "coldstart",
        "Cold start: commands that need no torch do not import it",
        ["command", "wall s", "x python -c pass", "x import torch", "peak RSS MB",
         "imports torch", "heavy modules imported"],
        rows,
        notes=(
            f"Median of {reps} interleaved fresh processes. Heavy modules checked with "
            f"`python -X importtime`: {', '.join(HEAVY)}. `inspect` reads headers only and "
            "takes digests from the on-disk cache (filled before timing). `recipes` and "
            "`cook` build their flags from the recipe registry, whose recipes use torch."
        ),
        targets=[("--help, --version and inspect do not import torch",
                  "none of them" if clean else "one does", clean)],
    )  # fmt: skip
    return [table]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cli(__doc__, bench, argv)


if __name__ == "__main__":
    main()
