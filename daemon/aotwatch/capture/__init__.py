"""In the training process: torch compile hooks -> CompileRecords handed to a sink."""

from aotwatch.capture.session import CaptureSession, Sink

__all__ = ["CaptureSession", "Sink"]
