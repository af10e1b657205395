"""The zygote of `dsm cluster up` (`dsm.localcluster._Zygote` starts it as `python -m dsm.zygote`): it imports
the node's code once, then for each JSON line on its standard input (a node's `dsm` arguments, environment
and log) forks a child that starts a session of its own, takes the log as its standard output and error and
runs `dsm node run` in-process; it answers each child's pid once the child holds its log as standard output,
and exits at the end of its input. A module of its own: it runs the command line (`dsm.cli`), which
`dsm.localcluster` must not import."""

from __future__ import annotations

import contextlib
import json
import os
import sys


def main() -> None:
    """The zygote's loop."""
    import traceback

    import dsm.server  # noqa: F401  (the node's code, imported once for every node forked below)
    from dsm.cli import main as run_command

    for line in sys.stdin:
        spec = json.loads(line)
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(ready_r)
                os.setsid()
                log = os.open(spec["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.close(log)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.close(devnull)
                os.close(ready_w)  # the zygote answers the pid now: the log is our standard output
                os.environ.clear()
                os.environ.update(spec["env"])
                try:
                    run_command(args=spec["args"], prog_name="dsm")
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        os.close(ready_w)
        os.read(ready_r, 1)  # b"" once the child closed its end (or exited)
        os.close(ready_r)
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
