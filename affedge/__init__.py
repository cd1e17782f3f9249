"""affedge: fast, private, offline affect annotation with small language models.

The runtime (this package) never imports torch, transformers or peft.
"""

from affedge.annotate import Annotator, load
from affedge.engines.base import LabelResult, ScoreResult
from affedge.errors import AffedgeError
from affedge.runner import Job, annotate_file

__version__ = "0.1.0"

__all__ = [
    "AffedgeError",
    "Annotator",
    "Job",
    "LabelResult",
    "ScoreResult",
    "__version__",
    "annotate_file",
    "load",
]
