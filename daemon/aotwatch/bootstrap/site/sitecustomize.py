"""aotwatch's process bootstrap (see aotwatch.bootstrap): start capture when AOTWATCH_TRACE is
set, then run the sitecustomize this one shadows, if there is one."""

import os
import sys


def _aotwatch_start():
    try:
        from aotwatch.bootstrap import start
    except ImportError as err:  # a Python without aotwatch: say so, run untraced
        print(f"aotwatch: not capturing in {sys.executable}: {err}", file=sys.stderr)
        return
    start()


def _chain():
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


if os.environ.get("AOTWATCH_TRACE"):
    _aotwatch_start()
_chain()
