"""aotwatch's process bootstrap (see aotwatch.attachment.bootstrap): start capture when
AOTWATCH_TRACE is set, then run the sitecustomize this one shadows, if there is one.

Every copy of this file starts with the same words (MARKER, the same before the bootstrap moved
into aotwatch.attachment): another install's bootstrap
directory on the path too is skipped when chaining, so one bootstrap runs per process and the
user's own sitecustomize still runs after it.
"""

import os
import sys

MARKER = b'"""aotwatch\'s process bootstrap'
UNTRACED_PREFIX = ".untraced-"  # aotwatch.attachment.bootstrap.UNTRACED_PREFIX


def _say_once(message):
    """Print ``message`` unless another process of this trace, on the same Python, has: the
    first one to create its marker in the archive directory says it."""
    name = UNTRACED_PREFIX + "".join(c if c.isalnum() else "_" for c in sys.executable)[-200:]
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        os.close(os.open(os.path.join(os.environ["AOTWATCH_TRACE"], name), flags, 0o600))
    except FileExistsError:
        return
    except OSError:
        pass  # no marker possible (no such directory): say it anyway
    print(message, file=sys.stderr)


def _aotwatch_start():
    try:
        from aotwatch.attachment.bootstrap import start
    except ImportError as err:  # a Python without aotwatch: say so once, run untraced
        _say_once(f"aotwatch: not capturing in {sys.executable}: {err}")
        return
    start()


def _is_bootstrap(origin):
    try:
        with open(origin, "rb") as source:
            return source.read(len(MARKER)) == MARKER
    except OSError:
        return False


def _chain():
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if os.path.abspath(entry or ".") == here:
            continue
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [entry])
        if spec is None or spec.loader is None or _is_bootstrap(spec.origin or ""):
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)
        return


if os.environ.get("AOTWATCH_TRACE"):
    _aotwatch_start()
_chain()
