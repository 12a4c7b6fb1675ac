"""Batching-aware model profiles ℓ(b): the facts every scheduling decision starts from."""

from squishy.profiles.io import load_profile, read_structured, reference_profile, reference_profiles, save_profile
from squishy.profiles.profile import Profile, clean_curve

__all__ = [
    "Profile",
    "clean_curve",
    "load_profile",
    "read_structured",
    "reference_profile",
    "reference_profiles",
    "save_profile",
]
