"""Short training schedules for any trainer, named the nnU-Net way.

nnU-Net ships ``nnUNetTrainer_5epochs`` and friends, one class per epoch count and all at 250
iterations per epoch, which is over ten minutes an epoch on a laptop CPU. Here any trainer name
(nnU-Net's or the plugin's) takes a suffix ``_<E>epochs`` or ``_<E>epochs_<I>iters``, e.g.
``nnUNetTrainer_10epochs_20iters``; the class is derived on first use and cached, so the same
name resolves identically at training, ``--c`` resumption and prediction time.

Two optional parts follow, for repeated and measured runs (``nnunet-efficient compare`` uses both):

- ``_seed<S>``: nnU-Net has no seed option (its runs differ in initialisation and data), so the
  derived trainer seeds Python's ``random``, NumPy and torch with ``S`` when it is built, before
  nnU-Net builds the network. The initial weights are then the same for every run of that name,
  and so is the data sampling and augmentation when it runs in the training process
  (``nnUNet_n_proc_DA=0``); nnU-Net's background augmentation workers reseed themselves from the
  operating system and deliver batches in whatever order they finish, so with workers two runs of
  one seed start alike but see different batches. A run resumed with ``--c`` is seeded again at
  its restart, so it is not bit-identical to an uninterrupted one either. Different seeds are the
  way to name and repeat independent runs of one recipe.
- ``_keep<e1>-<e2>-...``: after each of those epochs (counted from 1, all before the last) the
  trainer keeps a copy of that epoch's ``checkpoint_latest.pth`` as
  ``checkpoint_at_<iterations>iters.pth`` (:func:`snapshot_checkpoint_name`), a point of the learning
  curve inside the one schedule (the learning rate is not annealed there as it would be at the end of a
  schedule of that length).

Example: ``nnUNetTrainer_40epochs_50iters_seed1_keep10-20-30``.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from typing import NamedTuple

from nnunet_efficient.training.derived import derived_trainer, find_base_trainer

_SUFFIX = re.compile(r"(?P<base>.+?)_(?P<epochs>\d+)epochs?(?:_(?P<iters>\d+)iters)?"
                     r"(?:_seed(?P<seed>0|[1-9]\d*))?(?:_keep(?P<keep>[1-9]\d*(?:-[1-9]\d*)*))?")

#: nnU-Net's ratio of validation to training iterations (50 / 250).
VALIDATION_FRACTION = 0.2


class ScheduleName(NamedTuple):
    """The parts of ``Base_<E>epochs[_<I>iters][_seed<S>][_keep<e1>-<e2>...]``."""

    base: str
    epochs: int
    iterations: int | None = None
    seed: int | None = None
    keep_epochs: tuple[int, ...] = ()


def parse_schedule_name(name: str) -> ScheduleName | None:
    """Split a schedule name into its parts; None if it has no (valid) schedule suffix.

    Keep epochs must be increasing and before the last epoch (the last one is ``checkpoint_final.pth``).

    Example:
        >>> parse_schedule_name("nnUNetTrainer_10epochs_20iters")
        ScheduleName(base='nnUNetTrainer', epochs=10, iterations=20, seed=None, keep_epochs=())
        >>> parse_schedule_name("nnUNetTrainer_4epochs_5iters_seed1_keep1-2").keep_epochs
        (1, 2)
    """
    match = _SUFFIX.fullmatch(name)
    if match is None or int(match.group("epochs")) < 1 or match.group("iters") == "0":
        return None
    epochs = int(match.group("epochs"))
    keep = tuple(int(e) for e in match.group("keep").split("-")) if match.group("keep") else ()
    if list(keep) != sorted(set(keep)) or any(e >= epochs for e in keep):
        return None
    iters, seed = match.group("iters"), match.group("seed")
    return ScheduleName(match.group("base"), epochs, int(iters) if iters else None,
                        int(seed) if seed is not None else None, keep)


def schedule_name(base: str, epochs: int, iterations: int | None = None, seed: int | None = None,
                  keep_epochs: tuple[int, ...] = ()) -> str:
    """The trainer name :func:`parse_schedule_name` reads back into the same parts."""
    return (f"{base}_{epochs}epochs" + (f"_{iterations}iters" if iterations else "")
            + (f"_seed{seed}" if seed is not None else "")
            + (f"_keep{'-'.join(str(e) for e in keep_epochs)}" if keep_epochs else ""))


def snapshot_checkpoint_name(iterations: int) -> str:
    """File name of the checkpoint kept after ``iterations`` training iterations."""
    return f"checkpoint_at_{iterations}iters.pth"


def seed_everything(seed: int) -> None:
    """Seeds Python's ``random``, NumPy's global generator and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def with_schedule(base: type, epochs: int, iterations: int | None = None, seed: int | None = None,
                  keep_epochs: tuple[int, ...] = ()) -> type:
    """Subclass of trainer ``base`` that trains ``epochs`` × ``iterations`` (nnU-Net's 250 if None).

    Validation iterations per epoch keep nnU-Net's proportion (one fifth, at least one);
    ``checkpoint_latest.pth`` is written after every epoch, so ``--c`` resumes where it stopped.
    ``seed`` and ``keep_epochs``: see the module docstring.
    The class derives from ``resilient(base)`` (:mod:`nnunet_efficient.training.resilience`), so
    even under stock ``nnUNetv2_train`` an interruption saves the state and checkpoints are atomic.
    """
    keep_epochs = tuple(keep_epochs)
    name = schedule_name(base.__name__, epochs, iterations, seed, keep_epochs)
    if parse_schedule_name(name) != ScheduleName(base.__name__, epochs, iterations, seed, keep_epochs):
        raise ValueError(f"invalid schedule {name}: keep epochs must increase and lie before epoch {epochs}")
    from nnunet_efficient.training.resilience import resilient

    base = resilient(base)  # nnU-Net's own trainers too: these schedules are what long CPU runs use

    def __init__(self, plans, configuration, fold, dataset_json, device=None):
        if seed is not None:  # before anything random: the network is built later, in initialize()
            seed_everything(seed)
        kwargs = {} if device is None else {"device": device}
        base.__init__(self, plans, configuration, fold, dataset_json, **kwargs)
        self.num_epochs = epochs
        # nnU-Net writes checkpoint_latest every 50 epochs, so an interrupted short schedule could not
        # resume (--c) at all: every epoch here (a few MB per write, next to minutes of training)
        self.save_every = 1
        if iterations:
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = max(1, round(iterations * VALIDATION_FRACTION))

    namespace = {"__init__": __init__, "__module__": base.__module__,
                 "__doc__": f"{base.__name__} for {epochs} epochs"
                            + (f" of {iterations} iterations." if iterations else ".")}
    if keep_epochs:
        namespace.update(_snapshot_hooks(base, keep_epochs))
    return derived_trainer(name, lambda: type(name, (base,), namespace))


def _snapshot_hooks(base: type, keep_epochs: tuple[int, ...]) -> dict:
    """``on_epoch_end`` and ``load_checkpoint`` that keep ``checkpoint_latest.pth`` after ``keep_epochs``."""

    def keep_snapshot(self) -> str | None:
        """Copies ``checkpoint_latest.pth`` if the epochs done (``current_epoch``) are a keep epoch."""
        if self.current_epoch not in keep_epochs or self.local_rank != 0:
            return None
        target = os.path.join(self.output_folder,
                              snapshot_checkpoint_name(self.current_epoch * self.num_iterations_per_epoch))
        latest = os.path.join(self.output_folder, "checkpoint_latest.pth")
        if os.path.isfile(target) or not os.path.isfile(latest):
            return None
        # a copy, never a partial file: an interrupted run must not leave a truncated snapshot behind
        shutil.copyfile(latest, target + ".tmp")
        os.replace(target + ".tmp", target)
        return target

    def on_epoch_end(self):
        base.on_epoch_end(self)  # writes checkpoint_latest.pth and counts the epoch done
        keep_snapshot(self)

    def load_checkpoint(self, filename_or_checkpoint):
        base.load_checkpoint(self, filename_or_checkpoint)
        # stopped between writing checkpoint_latest and copying it: the copy is still owed
        if isinstance(filename_or_checkpoint, str) and \
                os.path.basename(filename_or_checkpoint) == "checkpoint_latest.pth":
            keep_snapshot(self)

    return {"keep_snapshot": keep_snapshot, "on_epoch_end": on_epoch_end, "load_checkpoint": load_checkpoint}


def schedule_variant(name: str) -> type:
    """Resolve a schedule name (:func:`parse_schedule_name`) to a trainer class, looking ``Base`` up as nnU-Net does.

    Raises:
        AttributeError: ``name`` has no schedule suffix or its base trainer does not exist (the
            error nnU-Net's lookup expects from a module that lacks the class).
    """
    parsed = parse_schedule_name(name)
    if parsed is None:
        raise AttributeError(name)
    try:
        return derived_trainer(name, lambda: with_schedule(find_base_trainer(name, parsed.base), parsed.epochs,
                                                           parsed.iterations, parsed.seed, parsed.keep_epochs))
    except ValueError:  # a name that is not canonical (e.g. "1epoch" with keep epochs)
        raise AttributeError(name) from None
