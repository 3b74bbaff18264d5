"""Objective measures of a conversion (SPEC.md section 6)."""
from __future__ import annotations

import numpy as np


def raw_chroma_accuracy(ref_f0: np.ndarray, est_f0: np.ndarray, cents: float = 50.0) -> float:
    """Share of the reference's voiced frames where the estimate is voiced and within
    ``cents`` of the reference, octave errors forgiven (mir_eval's raw chroma accuracy).

    Both contours ``[T]`` in Hz (0 = unvoiced) on the same frame grid; the longer one
    is truncated to the shorter.
    """
    n = min(len(ref_f0), len(est_f0))
    ref, est = np.asarray(ref_f0[:n], dtype=np.float64), np.asarray(est_f0[:n], dtype=np.float64)
    ref_v, est_v = ref > 0, est > 0
    if not ref_v.any():
        raise ValueError("the reference has no voiced frames")
    both = ref_v & est_v
    diff = 1200.0 * np.log2(np.where(both, est, 1.0) / np.where(both, ref, 1.0))
    chroma = np.abs(diff - 1200.0 * np.round(diff / 1200.0))
    return float(np.sum(both & (chroma <= cents)) / np.sum(ref_v))
