"""Verifiers: learned (ORM, PRM, GenRM, HF checkpoints) and automatic (oracle, noisy), one interface."""

from deliberate.rewards.base import (
    AGGREGATIONS,
    VERIFIERS,
    Verifier,
    VerifierStats,
    aggregate,
    get_verifier,
    register_verifier,
)

__all__ = ["AGGREGATIONS", "VERIFIERS", "Verifier", "VerifierStats", "aggregate", "get_verifier", "register_verifier"]
