"""Attach a process at its first ``torch.compile``, so a process that never compiles pays
one meta-path entry (or, if torch is imported already, one wrapped function).

Attaching while torch is still being imported would run into torch's own circular imports,
so the wrap waits until ``import torch`` has finished. Used by Ray's setup hook
(``cluster.attach``) and by the launcher bootstrap (``bootstrap``).
"""

from __future__ import annotations

import importlib.machinery
import sys

TYPE_CHECKING = False  # imports here cost every process the launcher bootstrap starts
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class _AfterImport:
    """A meta-path finder that runs ``callback`` right after the module ``name`` is first
    imported, then steps aside."""

    def __init__(self, name: str, callback: Callable[[], None]) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module, callback = spec.loader.exec_module, self.callback

        def exec_then_attach(module: Any) -> None:
            exec_module(module)
            callback()

        spec.loader.exec_module = exec_then_attach
        return spec


def _wrap_compile(attach: Callable[[], None]) -> None:
    """Make the first ``torch.compile`` call attach, then hand ``torch.compile`` back."""
    import functools

    import torch

    original = torch.compile

    @functools.wraps(original)
    def compile_after_attaching(*args: Any, **kwargs: Any) -> Any:
        if torch.compile is compile_after_attaching:
            torch.compile = original
        attach()
        return original(*args, **kwargs)

    torch.compile = compile_after_attaching


def attach_at_first_compile(attach: Callable[[], None]) -> None:
    """Call ``attach`` (which must not raise) before this process's first compile."""
    if "torch._dynamo" in sys.modules:
        attach()
    elif "torch" in sys.modules:
        _wrap_compile(attach)
    else:
        sys.meta_path.insert(0, _AfterImport("torch", lambda: _wrap_compile(attach)))
