"""Short training schedules for any trainer, named the nnU-Net way.

nnU-Net ships ``nnUNetTrainer_5epochs`` and friends, one class per epoch count and all at 250
iterations per epoch, which is over ten minutes an epoch on a laptop CPU. Here any trainer name
(nnU-Net's or the plugin's) takes a suffix ``_<E>epochs`` or ``_<E>epochs_<I>iters``, e.g.
``nnUNetTrainer_10epochs_20iters``; the class is derived on first use and cached, so the same
name resolves identically at training, ``--c`` resumption and prediction time.
"""

from __future__ import annotations

import re

from nnunet_efficient.training.derived import derived_trainer, find_base_trainer

_SUFFIX = re.compile(r"(?P<base>.+?)_(?P<epochs>\d+)epochs?(?:_(?P<iters>\d+)iters)?")

#: nnU-Net's ratio of validation to training iterations (50 / 250).
VALIDATION_FRACTION = 0.2


def parse_schedule_name(name: str) -> tuple[str, int, int | None] | None:
    """Split ``Base_<E>epochs[_<I>iters]`` into ``(Base, E, I)``; None if it has no such suffix.

    Example:
        >>> parse_schedule_name("nnUNetTrainer_10epochs_20iters")
        ('nnUNetTrainer', 10, 20)
    """
    match = _SUFFIX.fullmatch(name)
    if match is None or int(match.group("epochs")) < 1 or match.group("iters") == "0":
        return None
    iters = match.group("iters")
    return match.group("base"), int(match.group("epochs")), int(iters) if iters else None


def with_schedule(base: type, epochs: int, iterations: int | None = None) -> type:
    """Subclass of trainer ``base`` that trains ``epochs`` × ``iterations`` (nnU-Net's 250 if None).

    Validation iterations per epoch keep nnU-Net's proportion (one fifth, at least one);
    ``checkpoint_latest.pth`` is written after every epoch, so ``--c`` resumes where it stopped.
    """
    name = f"{base.__name__}_{epochs}epochs" + (f"_{iterations}iters" if iterations else "")

    def __init__(self, plans, configuration, fold, dataset_json, device=None):
        kwargs = {} if device is None else {"device": device}
        base.__init__(self, plans, configuration, fold, dataset_json, **kwargs)
        self.num_epochs = epochs
        # nnU-Net writes checkpoint_latest every 50 epochs, so an interrupted short schedule could not
        # resume (--c) at all: every epoch here (a few MB per write, next to minutes of training)
        self.save_every = 1
        if iterations:
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = max(1, round(iterations * VALIDATION_FRACTION))

    return derived_trainer(name, lambda: type(name, (base,), {
        "__init__": __init__, "__module__": base.__module__,
        "__doc__": f"{base.__name__} for {epochs} epochs" + (f" of {iterations} iterations." if iterations else ".")}))


def schedule_variant(name: str) -> type:
    """Resolve ``Base_<E>epochs[_<I>iters]`` to a trainer class, looking ``Base`` up as nnU-Net does.

    Raises:
        AttributeError: ``name`` has no schedule suffix or its base trainer does not exist (the
            error nnU-Net's lookup expects from a module that lacks the class).
    """
    parsed = parse_schedule_name(name)
    if parsed is None:
        raise AttributeError(name)
    base_name, epochs, iterations = parsed
    return derived_trainer(name, lambda: with_schedule(find_base_trainer(name, base_name), epochs, iterations))
