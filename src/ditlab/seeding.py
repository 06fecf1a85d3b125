"""Every seed ditlab derives comes from here, so that runs are reproducible and independent of batching.

Training draws (t, noise, condition dropout, flips, caption choice) are pure functions of
(run seed, global step) and the sampling noise of sample i is a pure function of (seed, i); nothing
depends on batch size, world size or resume points. Streams keep independent uses of one
(seed, index) pair apart.
"""
from __future__ import annotations

from enum import IntEnum

_MASK64 = 2**64 - 1


class Stream(IntEnum):
    """Independent random streams of one (seed, index) pair (XOR-ed into the derived seed)."""

    STEP = 0  # t, noise and condition dropout of a training step
    FLIPS = 0x5DEECE66D  # horizontal flips of a global batch
    CHOICE = 0x2545F4914F6CDD1D  # which caption of several a batch item uses


def mix64(seed: int, index: int) -> int:
    """splitmix64 finaliser of (seed, index) -> 64-bit int: nearby inputs decorrelate."""
    z = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(seed: int, index: int, stream: Stream = Stream.STEP) -> int:
    """A 63-bit seed (valid for ``torch.Generator.manual_seed``) for item ``index`` of run ``seed``."""
    return (mix64(seed, index) % 2**63) ^ int(stream)


def counter_uint64(seed: int, index: int) -> int:
    """A counter-based random 64-bit value of (seed, index): any subset of indices, in any order and on
    any rank, gets the values the full range has (used for the evaluation set's random labels)."""
    z = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xD1B54A32D192ED03) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the data permutation of ``epoch``."""
    return seed * 1_000_003 + epoch


def noise_seed(seed: int, index: int) -> int:
    """Seed of the initial noise of sample ``index``: ``seed + index`` (documented in the CLI: sample i uses
    seed + i)."""
    return seed + index


def solver_seed(seed: int, index: int) -> int:
    """Seed of the noise a stochastic sampler adds to sample ``index`` along the way (another stream than
    the initial noise, so the two never coincide)."""
    return seed + index + 2**31
