"""Built-in tasks, registered by name (``modelsoup tasks`` lists them)."""

from modelsoup.evaluation.task import register_task

register_task(
    "toy",
    "modelsoup.tasks.toy:make_task",
    "a tiny MLP on generated Gaussian-cluster data with shifted test sets (seconds on a CPU)",
)
register_task(
    "demo",
    "modelsoup.demo.demo_task:make_task",
    "MiniLM on Rotten Tomatoes snippets (split by movie); shifts: typos, Amazon, tweets, "
    "drug reviews (offline, from PyPI packages)",
)
