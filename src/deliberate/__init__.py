"""deliberate: reasoning by thinking longer — test-time search, verifiers and self-improvement.

The package is layered so data flows one way:
``tasks`` (problems + verifiers) -> ``models`` (backends) -> ``search`` (test-time strategies)
<- ``rewards`` (learned verifiers); ``train`` (recipes); ``eval`` (metrics, records, plots); ``cli``.
"""

__version__ = "0.1.0"

from deliberate.errors import DeliberateError
from deliberate.types import Completion, Compute, Problem, Sample, SampleRecord

__all__ = ["Completion", "Compute", "DeliberateError", "Problem", "Sample", "SampleRecord", "__version__"]
