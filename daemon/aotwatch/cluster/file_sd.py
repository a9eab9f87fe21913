"""The Prometheus file_sd file that lists the collectors and the head."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from aotwatch.cluster.paths import archive_root
from aotwatch.core.archive import private_directory
from aotwatch.core.config import Config
from aotwatch.core.wire import Endpoint, Target


def file_sd_path(config: Config) -> Path:
    """The configured file_sd path, or file_sd.json in the private archive root."""
    if config.collector.file_sd_path:
        return Path(config.collector.file_sd_path)
    return private_directory(archive_root(config), 0o711) / "file_sd.json"


def write_file_sd(path: Path, endpoints: list[Endpoint], head: Target | None) -> None:
    """Replace ``path`` atomically with one file_sd target group per collector and the head
    (none when the daemon stops: Prometheus then stops scraping, and no alert fires)."""
    groups = [
        _target_group(e, {"node_id": e.node_id, "hostname": e.hostname, "role": "collector"})
        for e in sorted(endpoints, key=lambda e: e.node_id)
    ]
    if head is not None:
        groups.append(_target_group(head, {"role": "head"}))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        try:
            json.dump(groups, tmp, indent=2)
            tmp.flush()
            os.fsync(tmp.fileno())
            os.chmod(tmp.name, 0o644)  # Prometheus may run as another user
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)


def _target_group(target: Target, labels: dict[str, str]) -> dict[str, Any]:
    """One file_sd group; ``__scheme__`` tells Prometheus to scrape a TLS endpoint over https."""
    if target.scheme == "https":
        labels = {**labels, "__scheme__": "https"}
    return {"targets": [f"{target.ip}:{target.port}"], "labels": labels}
