"""Model backends: one small interface (``Backend.generate``) over local and remote models."""

from deliberate.models.base import BACKENDS, Backend, backend_names, get_backend, register_backend
from deliberate.models.sampling import SamplingParams, sequence_seed

__all__ = ["BACKENDS", "Backend", "SamplingParams", "backend_names", "get_backend", "register_backend", "sequence_seed"]
