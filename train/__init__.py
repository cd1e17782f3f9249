"""Training recipes (installed as ``affedge.train``; needs the ``train`` extra).

Progressive chain-of-LoRA and multi-task instruction tuning land here; they read prompts and
labels from :mod:`affedge.tasks` and data from :mod:`affedge.datasets`.
"""
