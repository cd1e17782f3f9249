"""affedge: fast, private, offline affect annotation with small language models.

The runtime (this package) never imports torch, transformers or peft.
"""

from affedge.annotate import Annotator, load
from affedge.engines.base import LabelResult, ScoreResult
from affedge.errors import AffedgeError

__version__ = "0.1.0"

__all__ = ["AffedgeError", "Annotator", "LabelResult", "ScoreResult", "__version__", "load"]
