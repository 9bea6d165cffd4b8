"""Policies: what a training recipe needs of a model (sample, fine-tune, preference update), for the tiny
model and any Hugging Face causal LM. See :mod:`deliberate.policy.base`."""

from deliberate.policy.base import FinetuneResult, FinetuneSettings, Policy
from deliberate.policy.hf import HFPolicy
from deliberate.policy.load import load_policy
from deliberate.policy.preference import PreferenceResult, PreferenceSettings
from deliberate.policy.tiny import TinyPolicy

__all__ = ["FinetuneResult", "FinetuneSettings", "HFPolicy", "Policy", "PreferenceResult", "PreferenceSettings",
           "TinyPolicy", "load_policy"]
