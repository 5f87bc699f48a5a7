"""The output folder of a prediction: checked, claimed, and filled with complete files only.

nnU-Net writes each output directly to its final name; a crash then leaves a truncated file
that ``--continue_prediction`` would take for a finished case. Here the outputs are written into
a hidden staging folder beside them (same file system, so the move is an atomic rename) and
each case moves into place as soon as it is complete (:class:`StagedOutputs`). While a run
writes, its output folders are claimed for its ``-part_id`` (:func:`claim_output_folder`), so a
second process predicting the same part into the same folder is refused.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress

from nnunet_efficient.errors import EfficientError, InputFileError

STAGING_PREFIX = ".nnunet_efficient_partial_"
#: errors of writing the outputs that the user can fix (a full disk, a read-only folder, ...)
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def check_output_folder(folder: str) -> list[str]:
    """Create ``folder`` if needed and prove that files can be written there.

    Returns:
        The folders this call created, outermost first (see :func:`remove_created_folders`).

    Raises:
        InputFileError: the folder is a file, or cannot be created or written.
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputFileError(folder, "is a file; the output must be a folder")
    created = []
    parent = os.path.abspath(folder)
    while not os.path.exists(parent):
        created.insert(0, parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nnunet_efficient_write_test_"):
            pass
    except OSError as error:
        remove_created_folders(created)
        raise InputFileError(folder, f"output folder cannot be written ({error.strerror or error})") from None
    return created


def remove_created_folders(created: Sequence[str]) -> None:
    """Remove folders made by :func:`check_output_folder` again, innermost first, where still empty."""
    for folder in reversed(created):
        try:
            os.rmdir(folder)
        except OSError:
            return


LOCK_PREFIX = ".nnunet_efficient_lock"


@contextmanager
def claim_output_folder(folder: str, part_id: int = 0, num_parts: int = 1) -> Iterator[None]:
    """Hold an exclusive claim on ``folder`` for this ``-part_id`` while predicting into it.

    Two runs of the same part into one folder would predict every case twice and race for the
    files; runs of different parts (``-num_parts``) share a folder as in nnU-Net. The claim is an
    ``flock`` on a hidden file, so the kernel releases it whatever way the process ends.

    Raises:
        EfficientError: another process holds the claim.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no claim
        yield
        return
    name = LOCK_PREFIX + (f"_part{part_id}of{num_parts}" if num_parts > 1 else "")
    path = os.path.join(folder, name)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            claimed = True
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                claimed = False  # a file system without locks: proceed unclaimed
            else:
                handle.seek(0)
                holder = handle.read().strip() or "?"
                same_part = " with the same -part_id" if num_parts > 1 else ""
                raise EfficientError(f"{folder}: another nnunet-efficient predict (pid {holder}) is writing this "
                                     f"output folder{same_part}; wait for it to finish or give another -o") from None
        if claimed:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        try:
            yield
        finally:
            with suppress(FileNotFoundError):
                os.remove(path)
    finally:
        handle.close()


class StagedOutputs:
    """Outputs written into staging folders and moved into place as they complete.

    Used as ``with StagedOutputs(outputs, ending) as staged: run(staged)``: ``staged`` are the
    output names inside the staging folders (one per output folder, named for this process). The
    writer calls :meth:`publish_case` for each case it finishes; whatever is left (nnU-Net's own
    export, run files) moves at the end. A failure removes the staging folders; an ``OSError``
    of :data:`WRITE_ERRORS` becomes one line naming the file.

    Args:
        outputs: final output names without file ending.
        file_ending: the dataset's file ending (what :meth:`publish_case` moves, with ``.npz``/``.pkl``).
        part: ``(part_id, num_parts)`` of this run, for the claim on the folders.
        on_failure: called first when the run fails, while the folders are still claimed (the
            predictor ends the worker processes the run started).
    """

    def __init__(self, outputs: Sequence[str], file_ending: str, part: tuple[int, int] = (0, 1),
                 on_failure: Callable[[], None] | None = None):
        self.outputs = list(outputs)
        self.file_ending = file_ending
        self.part = part
        self.on_failure = on_failure
        self.folders = sorted({os.path.dirname(os.path.abspath(o)) for o in self.outputs})
        self.staging = {f: os.path.join(f, f"{STAGING_PREFIX}{os.getpid()}") for f in self.folders}
        self.staged = [os.path.join(self.staging[os.path.dirname(os.path.abspath(o))], os.path.basename(o))
                       for o in self.outputs]
        self._final = dict(zip(self.staged, self.outputs))
        #: cases whose outputs are complete in their final place
        self.cases_written = 0
        self._stack: ExitStack | None = None

    def __enter__(self) -> list[str]:
        self._stack = ExitStack()
        try:
            for folder in self.folders:
                self._stack.enter_context(claim_output_folder(folder, *self.part))
        except BaseException:
            self._stack.close()
            raise
        self._stack.callback(self._remove_staging)
        try:
            for s in self.staging.values():
                os.makedirs(s, exist_ok=True)
        except BaseException as error:
            try:
                self._fail(error)
            finally:
                self._stack.close()
            raise
        return list(self.staged)

    def __exit__(self, kind, error, traceback) -> bool:
        try:
            if error is None:
                try:  # what nnU-Net's own export and the run files left
                    for folder, s in self.staging.items():
                        for name in os.listdir(s):
                            os.replace(os.path.join(s, name), os.path.join(folder, name))
                except BaseException as move_error:
                    self._fail(move_error)
                    raise
                self.cases_written = len(self.outputs)
            else:
                self._fail(error)
            return False
        finally:
            self._stack.close()

    def _fail(self, error: BaseException) -> None:
        if self.on_failure is not None:
            self.on_failure()
        if isinstance(error, OSError) and error.errno in WRITE_ERRORS:  # a full disk, ...
            raise InputFileError(error.filename or self.folders[0],
                                 f"cannot be written ({error.strerror or error})") from None

    def publish_case(self, staged: str) -> None:
        """Move a finished case's files from the staging folder to their final names."""
        final = self._final.get(staged)
        if final is None:
            return
        for suffix in (self.file_ending, ".npz", ".pkl"):
            if os.path.isfile(staged + suffix):
                os.replace(staged + suffix, final + suffix)
        self.cases_written += 1

    def _remove_staging(self) -> None:
        self._final = {}
        for s in self.staging.values():
            shutil.rmtree(s, ignore_errors=True)
