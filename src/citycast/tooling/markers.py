"""Finds the measurement chirp (`citycast.media.chirp`) in a recording to a fraction of a sample (tooling).

Benchmarks feed `MarkerSource` (a chirp every second) into ingest and run `detect_markers` on what each
timed sink played: marker positions against their broadcast times give latency, and the same marker across
sites gives skew. `correlate_lag` does the same for an arbitrary reference such as the demo speech clip.

Detection is a matched filter: FFT cross-correlation with the chirp, normalised by the chirp's and the
signal's local energy (so a threshold of 0.5 means "half of a perfect match", whatever the playback volume),
then peak picking. The fractional part is not a parabola through three correlation samples (biased, because
the chirp's correlation oscillates at its ≈ 3 kHz centre frequency) but the maximum of the correlation with
the *continuous* chirp delayed by τ, found on a fine grid: this is the exact matched-filter estimate for a
band-limited marker.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from citycast.media.chirp import chirp, chirp_at

_F64 = npt.NDArray[np.float64]


def _fast_len(n: int) -> int:
    """A length ≥ n made of factors 2, 3, 5 (pocketfft is fast on those)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _sliding_dot(x: _F64, ref: _F64) -> _F64:
    """c[k] = Σ_m x[k+m]·ref[m] for every full overlap k, by overlap-save FFT in chunks."""
    n = ref.size
    count = x.size - n + 1
    if count <= 0:
        return np.zeros(0)
    nfft = max(1 << 16, _fast_len(4 * n))
    hop = nfft - n + 1
    ref_spectrum = np.conj(np.fft.rfft(ref, nfft))
    out = np.empty(count)
    for start in range(0, count, hop):
        seg = x[start : start + nfft]
        corr = np.fft.irfft(np.fft.rfft(seg, nfft) * ref_spectrum, nfft)
        take = min(hop, count - start)
        out[start : start + take] = corr[:take]
    return out


def _window_energy(x: _F64, n: int) -> _F64:
    """Σ x² over every length-n window (the same k as `_sliding_dot`)."""
    sums = np.concatenate(([0.0], np.cumsum(x * x)))
    energy: _F64 = np.maximum(sums[n:] - sums[:-n], 0.0)
    return energy


def _normalised(x: _F64, ref: _F64, min_level: float) -> tuple[_F64, _F64]:
    """(raw sliding correlation, correlation normalised to [-1, 1] by both energies).

    `min_level` (relative amplitude) keeps near-silent windows from matching noise: a window quieter than
    `min_level` times the reference scores proportionally less.
    """
    raw = _sliding_dot(x, ref)
    ref_energy = float(np.dot(ref, ref))
    floor = (min_level * min_level) * ref_energy
    ncc = raw / (math.sqrt(ref_energy) * np.sqrt(_window_energy(x, ref.size) + floor))
    return raw, ncc


def _pick_peaks(score: _F64, threshold: float, min_spacing: int) -> list[int]:
    """Local maxima ≥ threshold, strongest first, none within `min_spacing` of a stronger one; sorted."""
    if score.size == 0:
        return []
    padded = np.concatenate(([-np.inf], score, [-np.inf]))
    inner = padded[1:-1]
    idx = np.flatnonzero((inner >= threshold) & (inner >= padded[:-2]) & (inner > padded[2:]))
    kept: list[int] = []
    for i in idx[np.argsort(-score[idx], kind="stable")]:
        at = bisect.bisect_left(kept, int(i))
        if at > 0 and i - kept[at - 1] < min_spacing:
            continue
        if at < len(kept) and kept[at] - i < min_spacing:
            continue
        kept.insert(at, int(i))
    return kept


def _refine_max(evaluate: Callable[[_F64], _F64], centre: float) -> float:
    """Arg-max of a smooth peak near `centre` (within ±1): coarse grid, fine grid, then a parabola."""
    best = centre
    for half, steps in ((1.0, 16), (1.0 / 8, 16)):
        taus = best + np.linspace(-half, half, steps + 1)
        values = np.asarray(evaluate(taus), dtype=np.float64)
        i = int(np.argmax(values))
        i = min(max(i, 1), steps - 1)
        best = float(taus[i])
    step = 1.0 / 64
    ym, y0, yp = (float(v) for v in np.asarray(evaluate(np.array([best - step, best, best + step]))))
    denom = ym - 2 * y0 + yp
    if denom < 0:
        best += step * 0.5 * (ym - yp) / denom
    return best


def detect_markers(
    signal: npt.ArrayLike,
    *,
    threshold: float = 0.5,
    min_spacing_samples: int | None = None,
    min_level: float = 1e-3,
) -> list[float]:
    """Start positions (fractional samples, ascending) of every marker chirp in `signal` (48 kHz mono).

    `threshold` is on the normalised correlation (1 = perfect copy at any volume); peaks closer than
    `min_spacing_samples` (default: one chirp length) to a stronger one are dropped. Markers cut by either
    end of `signal` are not reported.
    """
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    ref = chirp().astype(np.float64)
    n = ref.size
    if x.size < n:
        return []
    _, ncc = _normalised(x, ref, min_level)
    spacing = n if min_spacing_samples is None else min_spacing_samples
    positions = []
    for k in _pick_peaks(ncc, threshold, spacing):
        lo, hi = max(0, k - 2), min(x.size, k + n + 2)
        m = np.arange(lo, hi, dtype=np.float64)
        seg = x[lo:hi]

        def score(taus: _F64, m: _F64 = m, seg: _F64 = seg) -> _F64:
            out: _F64 = chirp_at(m[None, :] - taus[:, None]) @ seg
            return out

        positions.append(_refine_max(score, float(k)))
    return positions


def detect_markers_in_wav(path: str | Path, **kwargs: float | int | None) -> list[float]:
    """`detect_markers` on an audio file (any format FFmpeg reads; resampled to 48 kHz mono if it is not)."""
    from citycast.media.sources import read_audio

    return detect_markers(read_audio(path), **kwargs)  # type: ignore[arg-type]


def correlate_lag(reference: npt.ArrayLike, signal: npt.ArrayLike, *, min_level: float = 1e-3) -> tuple[float, float]:
    """(lag, peak): where `reference` best appears in `signal`, in fractional samples, and how well.

    `lag` is the index in `signal` of the reference's first sample (only full overlaps are searched, so
    `signal` must be at least as long as `reference`); `peak` is the normalised correlation there, 1 for an
    exact copy at any volume. The fractional part is the maximum of the band-limited correlation.
    """
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    if ref.size == 0 or x.size < ref.size:
        raise ValueError("correlate_lag needs a non-empty reference no longer than the signal")
    _, ncc = _normalised(x, ref, min_level)
    k = int(np.argmax(ncc))
    peak = float(ncc[k])

    margin = 4
    lo, hi = max(0, k - margin), min(x.size, k + ref.size + margin)
    seg = x[lo:hi]
    nfft = _fast_len(seg.size + ref.size)
    cross = np.fft.rfft(seg, nfft) * np.conj(np.fft.rfft(ref, nfft))
    omega = 2 * np.pi * np.arange(cross.size) / nfft
    weights = np.full(cross.size, 2.0)
    weights[0] = 1.0
    if nfft % 2 == 0:
        weights[-1] = 1.0
    # r(k + δ) = Re Σ a·e^{jωδ}: the band-limited correlation around the integer peak k
    a = cross * (weights / nfft) * np.exp(1j * omega * (k - lo))

    delta = 0.0
    for _ in range(8):  # Newton on r'(δ) = 0; the peak of a correlation is smooth and concave near k
        turn = a * np.exp(1j * omega * delta)
        slope = float(np.real(np.dot(turn, 1j * omega)))
        curvature = float(np.real(np.dot(turn, -(omega * omega))))
        if curvature >= 0:
            break
        step = -slope / curvature
        delta += step
        if abs(delta) > 1.0 or abs(step) < 1e-6:
            break
    if abs(delta) <= 1.0 and curvature < 0:
        return k + delta, peak

    def score(taus: _F64) -> _F64:  # fallback: grid search (slower, no assumption on curvature)
        return np.array([float(np.real(np.dot(a, np.exp(1j * omega * (t - k))))) for t in taus])

    return _refine_max(score, float(k)), peak
