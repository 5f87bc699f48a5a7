"""Trainer classes derived from another trainer by a suffix of its name.

``<Base>_<E>epochs[_<I>iters]`` (:mod:`.schedules`) and ``<Base>_PatchPerformance``
(:mod:`.patch_performance`) name classes that exist nowhere as source: they are made on first
use from ``Base``, which nnU-Net's own lookup finds. Made once per name and kept, so one name
resolves to one class at training, ``--c`` resumption and prediction time.
"""

from __future__ import annotations

from collections.abc import Callable

_DERIVED: dict[str, type] = {}


def derived_trainer(name: str, make: Callable[[], type]) -> type:
    """The class called ``name``: ``make()`` the first time, the same class every later time."""
    if name not in _DERIVED:
        _DERIVED[name] = make()
    return _DERIVED[name]


def find_base_trainer(derived_name: str, base_name: str) -> type:
    """nnU-Net's trainer ``base_name``, looked up as nnU-Net looks up any trainer.

    Raises:
        AttributeError: ``derived_name``, when the base does not exist: the error nnU-Net's lookup
            expects from a module that lacks the class it probes for.
    """
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(base_name)
    except (RuntimeError, AssertionError):
        raise AttributeError(derived_name) from None
