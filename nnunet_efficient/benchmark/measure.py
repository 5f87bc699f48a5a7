"""Cost and quality measurements for one inference call: MACs, peak memory, stage times, Dice.

Pure helpers: nothing here imports nnunetv2, so a benchmark runner can wrap any strategy (nnU-Net's
predictor, the NMSW predictor, a sparse sliding window) in the same instruments.

Example::

    timer = StageTimer(device)
    with PeakMemory(device) as mem, timer.stage("network"):
        logits, macs = count_macs(strategy, image)
    row = {"macs": macs, "seconds": timer.seconds, "peak_host_mib": mem.host_peak_mib}
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

MIB = 2**20

Label = int | tuple[int, ...]


def count_macs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Calls ``fn(*args, **kwargs)`` and counts the multiply-accumulates of its tensor operations.

    Counts what ``torch.utils.flop_counter.FlopCounterMode`` counts (convolutions, mm/addmm/bmm,
    scaled-dot-product attention, and their backward passes when autograd runs), halved: the mode
    reports 2 FLOPs per multiply-accumulate. Bias additions, normalisation, activations,
    interpolation and anything done in numpy are not counted, so a Conv3d with ``C_in`` inputs,
    ``C_out`` outputs, kernel ``k³`` and ``groups=1`` costs ``N·C_out·C_in·k³·(output voxels)`` MACs
    with or without bias. Works inside ``torch.inference_mode()``/``torch.no_grad()`` and on any
    device.

    Args:
        fn: Any callable, e.g. a whole inference strategy or one network forward.
        *args: Positional arguments for ``fn``.
        **kwargs: Keyword arguments for ``fn``.

    Returns:
        ``(result, macs)``: what ``fn`` returned, and the MAC count (int).
    """
    mode = FlopCounterMode(display=False)
    with mode:
        result = fn(*args, **kwargs)
    return result, int(mode.get_total_flops()) // 2


def _is_cuda(device: str | torch.device | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def _read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_bytes() -> int | None:
    """Current resident set size of this process, or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional; only needed off Linux
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def _reset_hwm() -> bool:
    """Resets the kernel's peak-RSS counter (VmHWM) to the current RSS; False where not allowed.

    Linux >= 4.0 accepts "5" in /proc/self/clear_refs. This gives an exact per-block peak, which
    neither ``ru_maxrss`` (monotonic over the process lifetime) nor a sampling thread (misses
    spikes shorter than its interval) can.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _read_status_kib("VmHWM") is not None


# VmHWM is one counter per process, so a block that resets it would erase the peak that an
# enclosing block (or one in another thread) has seen so far; those are folded in first.
_hwm_lock = threading.Lock()
_hwm_active: list[PeakMemory] = []


class PeakMemory:
    """Context manager: peak host RSS and peak device memory during the ``with`` block.

    Host: exact peak RSS via the kernel's resettable high-water mark where Linux allows it
    (``method="hwm"``), otherwise a background thread sampling RSS every ``interval_s`` seconds
    (``method="sample"``; spikes shorter than the interval can be missed). Device: peak of
    ``torch.cuda.max_memory_allocated`` after a reset when ``device`` is cuda, else None. Memory
    freed before the block is not counted; memory allocated before and still held is (it is part of
    RSS), so ``host_delta_mib`` gives the growth over the RSS at entry.

    Args:
        device: The inference device; only a cuda device enables ``device_peak_mib``.
        interval_s: Sampling interval of the fallback thread, seconds.
        method: ``"auto"`` (hwm, else sample), ``"hwm"`` or ``"sample"``.

    Attributes (set on exit, MiB = 2**20 bytes):
        host_peak_mib: Peak RSS of the process during the block, or None if unreadable.
        host_baseline_mib: RSS at entry.
        host_delta_mib: ``host_peak_mib - host_baseline_mib`` (>= 0).
        device_peak_mib: Peak allocated cuda memory during the block, or None.
        method: The host method used (``"hwm"``, ``"sample"`` or None).
    """

    def __init__(self, device: str | torch.device | None = None, interval_s: float = 0.001,
                 method: str = "auto"):
        if method not in ("auto", "hwm", "sample"):
            raise ValueError(f"PeakMemory method must be 'auto', 'hwm' or 'sample', got {method!r}.")
        self.device = device
        self.interval_s = interval_s
        self.requested_method = method
        self.method: str | None = None
        self.host_peak_mib: float | None = None
        self.host_baseline_mib: float | None = None
        self.host_delta_mib: float | None = None
        self.device_peak_mib: float | None = None
        self._hwm_carry_kib = 0
        self._samples_max = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if _is_cuda(self.device):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        rss = _rss_bytes()
        self.host_baseline_mib = None if rss is None else rss / MIB
        if self.requested_method in ("auto", "hwm") and self._start_hwm():
            self.method = "hwm"
        elif self.requested_method == "hwm":
            raise RuntimeError("PeakMemory(method='hwm') needs a writable /proc/self/clear_refs (Linux).")
        elif rss is not None:
            self.method = "sample"
            self._samples_max = rss
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="PeakMemory", daemon=True)
            self._thread.start()
        return self

    def _start_hwm(self) -> bool:
        with _hwm_lock:
            current = _read_status_kib("VmHWM")
            if current is None:
                return False
            for other in _hwm_active:
                other._hwm_carry_kib = max(other._hwm_carry_kib, current)
            if not _reset_hwm():
                return False
            _hwm_active.append(self)
        return True

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = _rss_bytes()
            if rss is not None and rss > self._samples_max:
                self._samples_max = rss

    def __exit__(self, *exc: object) -> None:
        if _is_cuda(self.device):
            torch.cuda.synchronize(self.device)
            self.device_peak_mib = torch.cuda.max_memory_allocated(self.device) / MIB
        if self.method == "hwm":
            with _hwm_lock:
                _hwm_active.remove(self)
                hwm = _read_status_kib("VmHWM") or 0
            self.host_peak_mib = max(hwm, self._hwm_carry_kib) * 1024 / MIB
        elif self.method == "sample":
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            last = _rss_bytes() or 0
            self.host_peak_mib = max(self._samples_max, last) / MIB
        if self.host_peak_mib is not None and self.host_baseline_mib is not None:
            self.host_delta_mib = max(0.0, self.host_peak_mib - self.host_baseline_mib)


class StageTimer:
    """Wall-clock seconds per named stage (e.g. ``preprocess``, ``network``, ``export``).

    Entering the same stage again adds to its total, so a per-window loop can time ``network``
    inside it. With a cuda device the clock is read only after ``torch.cuda.synchronize``, since
    kernels launch asynchronously and would otherwise be billed to whichever stage waits on them.

    Args:
        device: The inference device; cuda enables synchronisation.
        clock: Monotonic clock in seconds; replaceable for tests.

    Attributes:
        seconds: ``{stage: seconds}`` in first-entered order.
    """

    def __init__(self, device: str | torch.device | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.device = device
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self._open: str | None = None

    def _now(self) -> float:
        if _is_cuda(self.device):
            torch.cuda.synchronize(self.device)
        return self.clock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Times the ``with`` block and adds it to stage ``name``.

        Raises:
            RuntimeError: If another stage of this timer is still open (nesting would count time
                twice in ``total``).
        """
        if self._open is not None:
            raise RuntimeError(f"StageTimer: stage {name!r} entered while stage {self._open!r} is open.")
        self._open = name
        start = self._now()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + self._now() - start
            self._open = None

    @property
    def total(self) -> float:
        """Sum of all stages, seconds."""
        return float(sum(self.seconds.values()))


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: Iterable[Label],
                   ignore_label: int | None = None) -> dict[Label, float]:
    """Dice per label or region, with nnU-Net's conventions (``evaluate_predictions.compute_metrics``).

    Dice = 2·TP / (2·TP + FP + FN); NaN where the label is absent from both prediction and
    reference (TP + FP + FN = 0), which nnU-Net's means then skip. A tuple is a region: the union of
    its labels. Voxels where ``ref == ignore_label`` are left out.

    Args:
        pred: Predicted label map, any shape, integer.
        ref: Reference label map, same shape as ``pred``.
        labels: Labels (int) or regions (tuple of int) to score; usually the foreground labels.
        ignore_label: Reference label whose voxels are not scored, or None.

    Returns:
        ``{label_or_region: dice}`` in the order of ``labels``.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"dice_per_class: prediction shape {pred.shape} differs from reference shape "
                         f"{ref.shape}.")
    use = None if ignore_label is None else ref != ignore_label
    out: dict[Label, float] = {}
    for label in labels:
        members = list(label) if isinstance(label, tuple) else [label]
        mask_pred = np.isin(pred, members)
        mask_ref = np.isin(ref, members)
        if use is not None:
            mask_pred &= use
            mask_ref &= use
        tp = int(np.count_nonzero(mask_pred & mask_ref))
        fp = int(np.count_nonzero(mask_pred)) - tp
        fn = int(np.count_nonzero(mask_ref)) - tp
        out[label] = float("nan") if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return out


def mean_dice(dice: dict[Any, float]) -> float:
    """Mean over labels, skipping NaN (labels absent in both); NaN when all are NaN or none given."""
    values = np.array([v for v in dice.values() if v is not None], dtype=float)
    if values.size == 0 or np.all(np.isnan(values)):
        return float("nan")
    return float(np.nanmean(values))
