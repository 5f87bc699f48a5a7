"""Training that survives what clusters and laptops do to it, through nnU-Net's own trainer hooks.

:class:`ResilientTraining` goes first in a trainer's bases (:func:`resilient` derives such a class
from any trainer, keeping its name, so checkpoints name the trainer as before and load with stock
tools). It overrides hooks only, never nnU-Net's loop, and keeps nnU-Net's checkpoint format:

- ``run_training``: claims the fold folder (a second training there is refused), checks that
  every case of the split is readable, turns SIGINT/SIGTERM into "save the state, then stop", and
  stops the data-loading workers on every way out. Workers ignore the signals meant for their
  process group and die with the training even when it is killed (``PR_SET_PDEATHSIG``, Linux).
- ``train_step`` / ``validation_step``: act on a pending signal between iterations; stop after
  :attr:`ResilientTraining.max_nonfinite_iterations` consecutive NaN/Inf losses.
- ``save_checkpoint``: nnU-Net's checkpoint written to a temporary file, flushed, then renamed over
  the previous one, so a kill or a full disk never leaves a half-written checkpoint; a network with
  NaN/Inf weights is never written.
- ``load_checkpoint``: a truncated checkpoint, or one trained with another configuration of the
  plans, is one line instead of an unpickling traceback or a silently different training.

User errors are :class:`TrainingStopped` (an ``EfficientError``): ``nnunet-efficient train`` prints
them as one line; under stock ``nnUNetv2_train`` an exception hook does the same.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shlex
import signal
import sys
import threading
from contextlib import suppress
from dataclasses import dataclass, field

import numpy as np
import torch

from nnunet_efficient.errors import EfficientError, InputFileError

#: the file in a fold folder whose ``flock`` marks a running training
LOCK_NAME = ".nnunet_efficient_training_lock"
#: suffix of a checkpoint being written; renamed onto the checkpoint once complete
PARTIAL_SUFFIX = ".partial"
#: messages of torch's zip writer when a write came up short (it reports no errno)
_TORCH_WRITE_FAILURES = ("unexpected pos", "failed writing", "file write failed")
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(EfficientError):
    """Training ended early for a reason the user can act on (signal, bad checkpoint, NaN loss, full disk)."""


@dataclass
class _State:
    """What the mixin tracks per trainer (no ``__init__`` of its own, so any trainer instance can adopt it)."""

    stop_signal: int | None = None
    saving_after_signal: bool = False
    epoch: int = -1
    iterations_done: int = 0
    nonfinite_streak: int = 0
    lock: object | None = None
    previous_handlers: dict = field(default_factory=dict)


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def resume_command() -> str:
    """The command line of this process with ``--c`` added: how to resume it."""
    argv = [os.path.basename(sys.argv[0]), *sys.argv[1:]] if sys.argv and sys.argv[0] else ["nnUNetv2_train"]
    if argv[0] in ("main.py", "__main__.py"):
        argv[0] = "nnunet-efficient"
    return shlex.join(argv + ([] if "--c" in argv else ["--c"]))


def _one_line_hook(previous):
    def hook(kind, value, traceback):
        if isinstance(value, EfficientError):
            sys.stderr.write(f"{os.path.basename(sys.argv[0] or 'nnUNetv2_train')}: error: {value}\n")
        else:
            previous(kind, value, traceback)
    hook.one_line = True
    return hook


def _raise(error: EfficientError):
    """Raise ``error``; uncaught (stock ``nnUNetv2_train``), it prints as one line and exits 1."""
    if not getattr(sys.excepthook, "one_line", False):
        sys.excepthook = _one_line_hook(sys.excepthook)
    raise error


# ---------------------------------------------------------------- data-loading workers


_training_pid: int | None = None
_starting_workers = False
_fork_hook_registered = False


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def _after_fork_in_child() -> None:
    parent = _training_pid
    if parent is None or os.getppid() != parent:
        return  # not a child of a training (a worker's own child, or no training running)
    if _starting_workers:
        # a terminal's Ctrl-C and a scheduler's SIGTERM go to the whole process group: the training
        # decides when its workers stop; each worker would otherwise die mid-batch (or print a traceback)
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if _set_parent_death_signal() and os.getppid() != parent:
        os._exit(1)  # the training died between fork() and prctl()


def guard_forked_children() -> None:
    """From now on, children forked by this process die with it (Linux), whatever way it ends."""
    global _training_pid, _fork_hook_registered
    _training_pid = os.getpid()
    if not _fork_hook_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_registered = True


def stop_workers(augmenter) -> None:
    """Stop a batchgenerators augmenter's worker processes: nnU-Net's ``_finish``, then kill any left.

    ``_finish`` tells the workers to exit while its results thread may still be receiving a batch
    whose tensors a worker shares by file descriptor; the worker is gone before the descriptor is
    fetched and the thread dies with an ``EOFError`` traceback on stderr (a race of
    batchgenerators and torch, seen in two of five catalogue runs). Nothing is lost: the thread's
    death during this stop is not reported.
    """
    if augmenter is None or not hasattr(augmenter, "_finish"):
        return  # SingleThreadedAugmenter (nnUNet_n_proc_DA=0): no workers
    processes = list(getattr(augmenter, "_processes", None) or [])
    results_thread = getattr(augmenter, "results_loop_thread", None)
    report = threading.excepthook

    def quiet_results_thread(args):
        if args.thread is not results_thread:
            report(args)

    threading.excepthook = quiet_results_thread
    with open(os.devnull, "w") as null:
        stdout, sys.stdout = sys.stdout, null
        try:
            augmenter._finish()
        except Exception:  # noqa: BLE001 - a broken queue must not keep the workers alive
            pass
        finally:
            sys.stdout = stdout
            if results_thread is not None:
                results_thread.join(timeout=5)
            threading.excepthook = report
    for process in processes:
        with suppress(Exception):
            if process.is_alive():
                process.kill()  # they ignore SIGTERM (see _after_fork_in_child)
            process.join(timeout=5)


# ---------------------------------------------------------------- the fold folder's claim


def claim_fold_folder(folder: str):
    """An exclusive ``flock`` on ``folder``'s lock file (released by the kernel however the process ends).

    Returns:
        The open lock file (close it to release), or None on a file system without locks.

    Raises:
        TrainingStopped: another process holds the claim.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                handle.close()
                return None
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise TrainingStopped(f"{folder}: another training (pid {holder}) is running in this fold folder; "
                                  f"wait for it to finish or stop it (both would write the same checkpoints)") from None
        # the holder before us may have removed the file while we opened it: lock the file that is there
        with suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def release_fold_folder(handle, folder: str) -> None:
    if handle is None or handle.closed:
        return
    with suppress(FileNotFoundError):
        os.remove(os.path.join(folder, LOCK_NAME))
    handle.close()


# ---------------------------------------------------------------- checkpoints


def load_checkpoint_file(path: str) -> dict:
    """``torch.load`` of a training checkpoint, or one line naming the file and what to do instead.

    Raises:
        InputFileError: the file cannot be unpickled (truncated, corrupt, not a checkpoint).
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
            raise ValueError("not an nnU-Net training checkpoint")
        return checkpoint
    except FileNotFoundError:
        raise InputFileError(path, "checkpoint missing") from None
    except Exception as error:  # noqa: BLE001 - unpickling raises anything
        from nnunet_efficient.common.messages import one_line

        folder, name = os.path.split(path)
        order = ["checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"]
        after = order[order.index(name) + 1:] if name in order else []
        fallback = next((n for n in after if os.path.isfile(os.path.join(folder, n))), None)
        advice = (f"delete it and rerun with --c to resume from {fallback}" if fallback
                  else "delete it and train again without --c")
        raise InputFileError(path, f"cannot be loaded, truncated or corrupt? ({one_line(error, 120)}); "
                                   f"{advice}") from None


def configuration_changes(saved_plans: dict, current_plans: dict, configuration: str) -> list[str]:
    """The keys of ``configuration`` (inheritance resolved) whose values differ between two plans."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    def resolved(plans):
        plans = {k: v for k, v in plans.items() if k != "continue_training"}
        return PlansManager(plans).get_configuration(configuration).configuration

    old, new = resolved(saved_plans), resolved(current_plans)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


# ---------------------------------------------------------------- the mixin


class ResilientTraining:
    """Hooks that make any ``nnUNetTrainer`` resumable and fail-safe; put first in the bases (see :func:`resilient`)."""

    #: consecutive iterations with a NaN or infinite loss after which training stops
    max_nonfinite_iterations: int = 5

    @property
    def _resilience(self) -> _State:
        state = self.__dict__.get("_resilience_state")
        if state is None:
            state = self.__dict__["_resilience_state"] = _State()
        return state

    # ---- the run

    def _claim(self) -> None:
        state = self._resilience
        if self.local_rank == 0 and (state.lock is None or state.lock.closed):
            try:
                state.lock = claim_fold_folder(self.output_folder)
            except EfficientError as error:
                _raise(error)

    def run_training(self):
        state = self._resilience
        self._claim()
        for name in os.listdir(self.output_folder):
            if name.endswith(".pth" + PARTIAL_SUFFIX):  # left by a kill during a write
                with suppress(FileNotFoundError):
                    os.remove(os.path.join(self.output_folder, name))
        try:
            self._check_split_cases()
            guard_forked_children()
            self._install_signal_handlers()
            try:
                super().run_training()
            except BaseException as error:
                if state.stop_signal is not None and not isinstance(error, TrainingStopped):
                    # a worker gave up after the signal; the state is still that of the last iteration
                    self._stop_for_signal()
                raise
            finally:
                self._restore_signal_handlers()
                stop_workers(self.dataloader_train)
                stop_workers(self.dataloader_val)
        except EfficientError as error:
            release_fold_folder(state.lock, self.output_folder)
            _raise(error)
        except BaseException:
            release_fold_folder(state.lock, self.output_folder)
            raise

    def perform_actual_validation(self, save_probabilities: bool = False):
        self._claim()
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            release_fold_folder(self._resilience.lock, self.output_folder)

    def on_train_end(self):
        # stopped here first, quietly (stop_workers); nnU-Net's own _finish then has nothing left to do
        stop_workers(self.dataloader_train)
        stop_workers(self.dataloader_val)
        super().on_train_end()

    def get_dataloaders(self):
        global _starting_workers
        # signals wait until the workers exist and ignore them (see _after_fork_in_child)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS) if self._in_main_thread() else None
        _starting_workers = True
        try:
            return super().get_dataloaders()
        finally:
            _starting_workers = False
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _check_split_cases(self) -> None:
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        from nnunet_efficient.dataset_checks import check_preprocessed_cases

        if self.local_rank != 0 or not os.path.isdir(self.preprocessed_dataset_folder):
            return
        tr_keys, val_keys = self.do_split()
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        source = f"splits_final.json (fold {self.fold})" if self.fold != "all" else "the preprocessed folder"
        check_preprocessed_cases(self.preprocessed_dataset_folder, sorted(set(tr_keys) | set(val_keys)),
                                 self.dataset_class, listed_in=source)

    # ---- signals

    @staticmethod
    def _in_main_thread() -> bool:
        return threading.current_thread() is threading.main_thread()

    def _install_signal_handlers(self) -> None:
        state = self._resilience
        if not self._in_main_thread():
            return
        for signum in _STOP_SIGNALS:
            state.previous_handlers[signum] = signal.signal(signum, self._on_stop_signal)

    def _restore_signal_handlers(self) -> None:
        state = self._resilience
        for signum, handler in state.previous_handlers.items():
            signal.signal(signum, handler)
        state.previous_handlers.clear()

    def _on_stop_signal(self, signum, frame) -> None:
        state = self._resilience
        if state.stop_signal is not None:
            if state.saving_after_signal:
                return  # let the state be written; the write is atomic and takes seconds
            raise TrainingStopped(f"interrupted by {_signal_name(signum)} again, without saving; resume from the "
                                  f"last checkpoint with: {resume_command()}")
        state.stop_signal = signum  # acted on between two iterations (_stop_if_signalled)

    def _stop_if_signalled(self) -> None:
        if self._resilience.stop_signal is not None:
            self._stop_for_signal()

    def _stop_for_signal(self):
        state = self._resilience
        name, epoch = _signal_name(state.stop_signal), self.current_epoch
        where = f"in epoch {epoch} after {self._iterations_this_epoch()} of {self.num_iterations_per_epoch} iterations"
        if self.disable_checkpointing:
            raise TrainingStopped(f"interrupted by {name} {where}; checkpointing is disabled "
                                  f"(--disable_checkpointing), so there is nothing to resume from")
        path = os.path.join(self.output_folder, "checkpoint_latest.pth")
        state.saving_after_signal = True
        self.current_epoch -= 1  # nnU-Net stores current_epoch + 1, the epoch --c starts with: this one again
        try:
            self.save_checkpoint(path)
        finally:
            self.current_epoch += 1
            state.saving_after_signal = False
        raise TrainingStopped(f"interrupted by {name} {where}: state saved to {path}; "
                              f"resume with: {resume_command()}")

    def _iterations_this_epoch(self) -> int:
        state = self._resilience
        return state.iterations_done if state.epoch == self.current_epoch else 0

    # ---- iterations

    def train_step(self, batch: dict) -> dict:
        self._stop_if_signalled()
        output = super().train_step(batch)
        state = self._resilience
        if state.epoch != self.current_epoch:
            state.epoch, state.iterations_done = self.current_epoch, 0
        state.iterations_done += 1
        if np.all(np.isfinite(np.asarray(output["loss"], dtype=np.float64))):
            state.nonfinite_streak = 0
        else:
            state.nonfinite_streak += 1
            if state.nonfinite_streak >= self.max_nonfinite_iterations:
                raise TrainingStopped(self._nonfinite_message(f"the loss was NaN or infinite in "
                                                              f"{state.nonfinite_streak} consecutive iterations"))
        self._stop_if_signalled()
        return output

    def validation_step(self, batch: dict) -> dict:
        self._stop_if_signalled()
        return super().validation_step(batch)

    def _nonfinite_message(self, what: str) -> str:
        return (f"training stopped in epoch {self.current_epoch}: {what}; no checkpoint of this model was written "
                f"(earlier ones in {self.output_folder} are kept). Likely causes: a learning rate too high for this "
                f"network, or NaN/Inf values in the preprocessed data ({self.preprocessed_dataset_folder})")

    # ---- checkpoints

    def _network_is_finite(self) -> bool:
        if self.network is None:
            return True
        return all(bool(torch.isfinite(p).all()) for p in self.network.parameters())

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        if not self._network_is_finite():
            streak = self._resilience.nonfinite_streak
            raise TrainingStopped(self._nonfinite_message(
                f"the network's weights are NaN or infinite ({streak} non-finite loss(es) in a row) as "
                f"{os.path.basename(filename)} was to be written"))
        partial = filename + PARTIAL_SUFFIX
        try:
            super().save_checkpoint(partial)
            with open(partial, "rb+") as written:
                os.fsync(written.fileno())
            os.replace(partial, filename)
        except BaseException as error:
            with suppress(FileNotFoundError):
                os.remove(partial)
            write_failed = isinstance(error, OSError) or (
                isinstance(error, RuntimeError) and any(m in str(error) for m in _TORCH_WRITE_FAILURES))
            if not write_failed:
                raise
            reason = error.strerror if isinstance(error, OSError) and error.strerror else "the write came up short"
            kept = (f"the previous {os.path.basename(filename)} is intact" if os.path.isfile(filename)
                    else "nothing was overwritten")
            raise TrainingStopped(f"{filename}: could not be written ({reason}), disk full? {kept}; free some space, "
                                  f"then resume with: {resume_command()}") from None
        with suppress(OSError):  # the rename itself survives a power cut only once the folder is synced
            folder = os.open(os.path.dirname(filename) or ".", os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if isinstance(filename_or_checkpoint, str):
            try:
                checkpoint = load_checkpoint_file(filename_or_checkpoint)
                self._check_same_configuration(checkpoint, filename_or_checkpoint)
            except EfficientError as error:
                _raise(error)
        super().load_checkpoint(filename_or_checkpoint)

    def _check_same_configuration(self, checkpoint: dict, path: str) -> None:
        init_args = checkpoint.get("init_args") or {}
        saved_plans = init_args.get("plans")
        if not isinstance(saved_plans, dict) or init_args.get("configuration") != self.configuration_name:
            return  # a checkpoint of another nnU-Net version or another configuration: nnU-Net decides
        changed = configuration_changes(saved_plans, self.plans_manager.plans, self.configuration_name)
        if changed:
            plans_file = os.path.join(self.preprocessed_dataset_folder_base, self.plans_manager.plans_name + ".json")
            raise InputFileError(path, f"was trained with another '{self.configuration_name}' configuration than "
                                       f"{plans_file} now holds ({', '.join(changed)} changed); restore those plans "
                                       f"to resume, or train again without --c")


# ---------------------------------------------------------------- any trainer


_RESILIENT: dict[type, type] = {}


def resilient(trainer_class: type) -> type:
    """``trainer_class`` with :class:`ResilientTraining` first in its bases, under the same name (cached).

    The name is what nnU-Net writes into checkpoints and folder names, so models trained this way
    load with stock nnU-Net tools.
    """
    if issubclass(trainer_class, ResilientTraining):
        return trainer_class
    if trainer_class not in _RESILIENT:
        _RESILIENT[trainer_class] = type(trainer_class.__name__, (ResilientTraining, trainer_class), {
            "__module__": trainer_class.__module__, "__qualname__": trainer_class.__qualname__,
            "__doc__": trainer_class.__doc__})
    return _RESILIENT[trainer_class]


def make_resilient(trainer) -> None:
    """Give a trainer built by nnU-Net's ``get_trainer_from_args`` the resilient hooks.

    The derived class adds methods and no instance state of its own, so moving the instance to it
    keeps nnU-Net's construction untouched (``nnUNetv2_train`` builds the same object).
    """
    trainer.__class__ = resilient(type(trainer))


def run_training(dataset_name_or_id: str, configuration: str, fold: str, trainer_class_name: str = "nnUNetTrainer",
                 plans_identifier: str = "nnUNetPlans", pretrained_weights: str | None = None, num_gpus: int = 1,
                 export_validation_probabilities: bool = False, continue_training: bool = False,
                 only_run_validation: bool = False, disable_checkpointing: bool = False, val_with_best: bool = False,
                 device: torch.device = torch.device("cuda")) -> None:
    """nnU-Net's ``run_training`` with a resilient trainer; its arguments and steps (single device).

    Several GPUs (DDP) go to nnU-Net's own ``run_training``: it builds the trainers in its worker
    processes, where the plugin's trainers are resilient by class and nnU-Net's are as stock.

    Raises:
        EfficientError: a user error or a stop of :class:`ResilientTraining`, as one line.
    """
    from nnunetv2.run import run_training as nnunet

    if num_gpus > 1:
        nnunet.run_training(dataset_name_or_id, configuration, fold, trainer_class_name, plans_identifier,
                            pretrained_weights, num_gpus, export_validation_probabilities, continue_training,
                            only_run_validation, disable_checkpointing, val_with_best, device=device)
        return
    if continue_training and only_run_validation:
        raise EfficientError("--c and --val cannot be combined")
    if val_with_best and disable_checkpointing:
        raise EfficientError("--val_best needs checkpoints; it cannot be combined with --disable_checkpointing")
    fold = fold if fold == "all" else int(fold)
    trainer = nnunet.get_trainer_from_args(str(dataset_name_or_id), configuration, fold, trainer_class_name,
                                           plans_identifier, continue_training, device=device)
    make_resilient(trainer)
    if disable_checkpointing:
        trainer.disable_checkpointing = True
    if only_run_validation and not os.path.isfile(os.path.join(trainer.output_folder, "checkpoint_final.pth")):
        raise InputFileError(os.path.join(trainer.output_folder, "checkpoint_final.pth"),
                             "missing: --val needs a finished training")
    nnunet.maybe_load_checkpoint(trainer, continue_training, only_run_validation, pretrained_weights)
    if torch.cuda.is_available():
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    if not only_run_validation:
        trainer.run_training()
    if val_with_best:
        trainer.load_checkpoint(os.path.join(trainer.output_folder, "checkpoint_best.pth"))
    trainer.perform_actual_validation(export_validation_probabilities)
