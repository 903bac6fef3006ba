"""``python -m modelsoup ...``: the command line (``torchrun ... -m modelsoup ...`` too)."""

from modelsoup.cli.main import entrypoint

if __name__ == "__main__":
    entrypoint()
