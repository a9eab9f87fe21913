"""aotwatch: capture torch.compile's AOTAutograd metadata and compile metrics, export them.

``aotwatch.attach()`` captures every compile in this process; ``aotwatch.detach()`` stops.
Importing this package imports neither torch nor Ray.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself costs start-up time in every bootstrapped process
if TYPE_CHECKING:
    from typing import Any

    from aotwatch.attachment.process import Attachment


def __getattr__(name: str) -> Any:
    """``__version__``, read from the installed metadata when first asked: importing
    aotwatch stays cheap for every process the launcher bootstrap starts."""
    if name != "__version__":
        raise AttributeError(f"module 'aotwatch' has no attribute {name!r}")
    from importlib import metadata

    try:
        return metadata.version("aotwatch")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def attach(config: Any = None) -> Attachment:
    """Capture every compile in this process (see ``aotwatch.attachment.process.attach``)."""
    from aotwatch.attachment.process import attach as _attach

    return _attach(config)


def detach() -> None:
    """Stop capturing (see ``aotwatch.attachment.process.detach``)."""
    from aotwatch.attachment.process import detach as _detach

    _detach()


__all__ = ["__version__", "attach", "detach"]
