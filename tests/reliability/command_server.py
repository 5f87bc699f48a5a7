"""A fork server that runs ``nnunet-efficient`` commands as child processes, imports paid once.

Each request forks a child that does what the ``nnunet-efficient`` console script does
(``sys.exit(main())`` with ``sys.argv`` set; or stock ``nnUNetv2_train``'s, with ``"program":
"nnUNetv2_train"``), with its own stdout and stderr files, working
folder, environment additions and, for fault injection, a file-size limit. A child is a real
process with a real exit status, real file descriptors and real signals; only the 15 s of
importing torch and nnU-Net happen once, in this server, instead of once per case.

Protocol (one JSON object per line): the test writes ``{"op": "start", ...}`` or
``{"op": "wait", "pid": N}`` to stdin; the server answers on the stdout it was started with.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import traceback


def _entry_point(program: str):
    """The function a console script calls: ``nnunet-efficient``'s, or stock ``nnUNetv2_train``'s."""
    if program == "nnUNetv2_train":
        from nnunetv2.run.run_training import run_training_entry

        return run_training_entry
    from nnunet_efficient.cli.main import main

    return main


def _child(request: dict) -> None:
    program = request.get("program") or "nnunet-efficient"
    code = 1
    try:
        os.setpgid(0, 0)  # its own process group: a group SIGINT reaches the command, not the server
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.chdir(request["cwd"])
        os.environ.update(request.get("env") or {})
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if request.get("max_file_bytes"):
            # a full disk as the writing code sees it: write() fails (EFBIG) past this size
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            limit = int(request["max_file_bytes"])
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        sys.argv = [program, *request["argv"]]
        code = _entry_point(program)() or 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:
        sys.excepthook(*sys.exc_info())  # what the interpreter does with an uncaught exception (exit 1)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def serve() -> None:
    # the protocol keeps the original stdout; anything the imports print goes to stderr (a log)
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import nnunetv2.experiment_planning.plan_and_preprocess_api  # noqa: F401
    import nnunetv2.run.run_training  # noqa: F401

    import nnunet_efficient.benchmark.runner  # noqa: F401
    import nnunet_efficient.cli.main  # noqa: F401
    import nnunet_efficient.dataset_checks  # noqa: F401
    import nnunet_efficient.inference.predictor  # noqa: F401
    import nnunet_efficient.planners.api  # noqa: F401

    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            protocol.write(json.dumps({"pid": pid}) + "\n")
        elif request["op"] == "wait":
            _, status = os.waitpid(request["pid"], 0)
            protocol.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")


if __name__ == "__main__":
    serve()
