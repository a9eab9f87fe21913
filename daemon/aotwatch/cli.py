"""The ``aotwatch`` command: trace any launcher, report archives, run jobs, check a config."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from aotwatch.core.config import ArchiveConfig, Config, ConfigError, load_config

EXAMPLE_MODULE = "aotwatch.examples.tiny_train"
DEFAULT_TRACE_ARCHIVE = "aotwatch-trace"
USAGE_ERROR = 2


def _fail(message: str) -> int:
    print(f"aotwatch: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def _trace_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    archive = args.archive or config.archive.path or DEFAULT_TRACE_ARCHIVE
    export = config.export
    if args.port is not None:
        export = dataclasses.replace(export, enabled=True, port=args.port)
    changes = {"archive": ArchiveConfig(path=str(archive)), "export": export}
    if args.job_name:
        changes["job_name"] = args.job_name
    return dataclasses.replace(config, **changes)


def cmd_trace(args: argparse.Namespace) -> int:
    from aotwatch.attachment import bootstrap, trace

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        command = trace.resolve(command or ["python", "-m", EXAMPLE_MODULE])
        config = _trace_config(args)
        root = bootstrap.trace_root(config.archive.path)
        trace.check_port(config)
    except (ValueError, OSError) as err:  # TraceError, ConfigError, UnsafePath, ExportError
        return _fail(str(err))
    return trace.trace(command, config, root)


def cmd_env(args: argparse.Namespace) -> int:
    import shlex

    from aotwatch.attachment import bootstrap

    try:
        config = load_config(args.config) if args.config else None
        root = bootstrap.trace_root(args.archive).resolve()
    except (ValueError, OSError) as err:
        return _fail(str(err))
    config_json = json.dumps(config.to_dict()) if config else None
    for name, value in bootstrap.environment(root, config_json).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from aotwatch.report import summary as report

    try:
        config = load_config(args.config)
    except ConfigError as err:
        return _fail(str(err))
    if args.job is not None:
        from aotwatch.cluster.paths import archive_root

        root = Path(args.path) if args.path else archive_root(config)
        paths = report.job_archives(root, args.job)
        if not paths:
            return _fail(f"{root}: no archive of job {args.job!r} in its collectors' directories")
    elif args.path is None:
        return _fail("name an archive directory, or a job with --job NAME")
    else:
        paths, skipped = report.trusted_archives(report.archives_at(args.path))
        for line in skipped:
            print(line, file=sys.stderr)
        if not paths:
            return _fail(
                f"{args.path}: no archive there (expected a records.jsonl, its directory, a "
                "directory of them, or an archive root of aotwatch run)"
            )
    if args.format == "html" and not args.output:
        return _fail("--format html writes a file: name it with -o FILE")
    if args.format == "perfetto":
        return _write_perfetto(paths, args.output)
    try:
        text = _report_text(args.format, paths, config)
    except (OSError, UnicodeDecodeError) as err:
        return _fail(f"{args.path or args.job}: cannot read: {err}")
    if not args.output:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as err:
        return _fail(f"{args.output}: cannot write: {err.strerror or err}")
    print(f"aotwatch: report -> {args.output}", file=sys.stderr)
    return 0


def _write_perfetto(paths: list[Path], output: str | None) -> int:
    """The Chrome Trace Event file of the archives, streamed to ``output`` or stdout."""
    from aotwatch.report.perfetto import write_trace

    try:
        if not output:
            write_trace(paths, sys.stdout)
            return 0
        with open(output, "w", encoding="utf-8") as out:
            write_trace(paths, out)
    except (OSError, UnicodeDecodeError) as err:
        return _fail(f"the trace to {output or 'stdout'}: {err}")
    print(f"aotwatch: report -> {output}", file=sys.stderr)
    return 0


def _report_text(output: str, paths: list[Path], config: Config) -> str:
    from aotwatch.core import cost
    from aotwatch.report import summary as report

    limit = config.limits.max_series_per_metric
    ledger = cost.Ledger(config.collector.max_cost_graphs)
    if output == "html":
        from aotwatch.report.html import Page, render

        page = Page()
        _, findings = report.read_archives(paths, limit, lambda r: (page.add(r), ledger.add(r)))
        costs = report.costs_by_job(ledger.redundant(), ledger.waits(), ledger.twice())
        return render(page, findings, paths, costs, ledger.causes())
    snapshot, findings = report.read_archives(paths, limit, ledger.add)
    if output == "json":
        result = report.as_json(snapshot, findings, report.cost_values(ledger))
        return json.dumps(result, indent=2, sort_keys=True) + "\n"
    if output == "prometheus":
        return report.prometheus(snapshot, config.labels, findings, report.cost_values(ledger))
    lines = [report.table(snapshot), "", *report.divergence_lines(findings)]
    costs = report.cost_lines(ledger.redundant(), ledger.waits(), ledger.twice())
    return "\n".join([*lines, *costs]) + "\n"


def _check_web_configs(config: Config) -> None:
    """Read and check the web-config files that ``config`` names (ConfigError if bad)."""
    from aotwatch.export.webconfig import load_web_config

    for web_config in {config.export.web_config, config.collector.web_config} - {None}:
        load_web_config(web_config)


def _load_checked(path: str | None) -> Config:
    """The config at ``path``, with the web-config files it names checked too."""
    config = load_config(path)
    _check_web_configs(config)
    return config


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = _load_checked(args.file)
    except ConfigError as err:
        return _fail(str(err))
    print(f"{args.file}: ok")
    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    return 0


def _check_local_ports(config: Config, source: str) -> None:
    """A local cluster's collector and head serve on this machine: a port in use fails here,
    before Ray starts, not in a collector that Ray restarts forever."""
    address = config.collector.address
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for key in ("port", "head_port"):
        port = getattr(config.collector, key)
        try:
            if port:
                socket.create_server((address, port), family=family).close()
        except OSError as err:
            reason = os.strerror(err.errno) if err.errno else err  # not create_server's text
            problem = f"cannot serve /metrics on {address}:{port}: {reason}"
            raise ConfigError(
                problem,
                file=source,
                key=f"aotwatch.collector.{key}",
                expected="a free port (0 picks any free port)",
            ) from None


def _check_archive_root(config: Config) -> None:
    """A local cluster's collector and head keep their files on this machine: an archive
    directory that another user controls fails here (UnsafePath), not in a collector."""
    from aotwatch.cluster.paths import archive_root
    from aotwatch.core.archive import private_directory

    private_directory(archive_root(config), 0o711)


def cmd_run(args: argparse.Namespace) -> int:
    from aotwatch.cluster.jobs import check_runnable, load_job

    try:
        job = load_job(args.job)
    except ConfigError as err:
        return _fail(str(err))
    local = job.config.cluster.address is None and not os.environ.get("RAY_ADDRESS")
    if local:
        # A local cluster serves this machine only: loopback, no usage reports. Ray reads
        # these when it is imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        _check_web_configs(job.config)
        if local:
            _check_local_ports(job.config, args.job)
            _check_archive_root(job.config)
        check_runnable(job, args.job)
    except (ConfigError, OSError) as err:  # OSError: an archive directory aotwatch won't use
        return _fail(str(err))
    from aotwatch.cluster import driver

    return _on_cluster(lambda: driver.run_job(job, linger=args.linger, verbose=args.verbose))


def _on_cluster(command: Callable[[], int]) -> int:
    """``command()``, or one line and exit 2 when the named Ray cluster does not answer."""
    from aotwatch.cluster.workers import ClusterUnreachable

    try:
        return command()
    except ClusterUnreachable as err:
        return _fail(str(err))


def _cluster_config(args: argparse.Namespace) -> Config:
    config = _load_checked(args.config)
    address = args.address or config.cluster.address or "auto"
    return dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, address=address))


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = _cluster_config(args)
    except ConfigError as err:
        return _fail(str(err))
    from aotwatch.cluster import serve

    return _on_cluster(lambda: serve.serve(config, interval=args.interval, verbose=args.verbose))


def cmd_status(args: argparse.Namespace) -> int:
    try:
        config = _cluster_config(args)
    except ConfigError as err:
        return _fail(str(err))
    return _on_cluster(lambda: _status(config))


def _status(config: Config) -> int:
    import ray

    from aotwatch.cluster import driver, serve

    driver.connect(config)
    try:
        head = driver.head_handle(config)
    except ValueError:
        print("aotwatch is not running on this cluster (start it with `aotwatch serve`)")
        ray.shutdown()
        return 1
    try:
        return (
            0 if serve.print_status(ray.get(head.status.remote(), timeout=driver.TIMEOUT_S)) else 1
        )
    finally:
        ray.shutdown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aotwatch",
        description="Capture torch.compile's AOTAutograd metadata and compile metrics; "
        "export them to Prometheus.",
    )
    commands = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    commands_added = (
        _add_trace,
        _add_env,
        _add_report,
        _add_run,
        _add_cluster_commands,
        _add_check_config,
    )
    for add in commands_added:
        add(commands)
    return parser


def _add_trace(commands: Any) -> None:
    trace = commands.add_parser(
        "trace",
        help="run a command with every Python process it starts traced",
        description="Run COMMAND (python, torchrun, srun, a shell script, ...) with every "
        "Python process it starts capturing its compiles: each writes its own archive under "
        "DIR (one per rank) and serves /metrics in local mode (port plus its local rank). At "
        "the end, print the report of all ranks and their divergences. Without a command it "
        f"runs the bundled example ({EXAMPLE_MODULE}). The exit status is the command's.",
        usage="aotwatch trace [--config F] [--archive DIR] [--port N] [--job-name NAME] "
        "[-- COMMAND [ARGS]]",
    )
    trace.add_argument("--config", metavar="F", help="YAML config (default: built-in defaults)")
    trace.add_argument(
        "--archive", metavar="DIR", help=f"record directory (default: {DEFAULT_TRACE_ARCHIVE})"
    )
    trace.add_argument("--port", type=int, metavar="N", help="serve /metrics on N (0: any free)")
    trace.add_argument("--job-name", metavar="NAME", help="job_name label (default: from config)")
    trace.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    trace.set_defaults(func=cmd_trace)


def _add_env(commands: Any) -> None:
    env = commands.add_parser(
        "env",
        help="print the variables that trace every Python process of any launcher",
        description="Print `export` lines for a shell: with them, every Python process "
        "started afterwards (by srun, mpirun, torchrun, ...) captures its compiles into its "
        'own archive under DIR, as under `aotwatch trace`. Use: eval "$(aotwatch env '
        '--archive DIR)"; srun python train.py',
    )
    env.add_argument("--archive", metavar="DIR", default=DEFAULT_TRACE_ARCHIVE)
    env.add_argument("--config", metavar="F", help="YAML config (default: built-in defaults)")
    env.set_defaults(func=cmd_env)


def _add_report(commands: Any) -> None:
    report = commands.add_parser("report", help="rebuild the metrics from an archive")
    report.add_argument(
        "path",
        nargs="?",
        help="an archive directory or its records.jsonl, a directory of per-rank archives "
        "(aotwatch trace's), or an archive root (aotwatch run's: every job it holds); with "
        "--job, the archive root (default: the config's archive.path)",
    )
    report.add_argument(
        "--job", metavar="NAME", help="the job's archives on every node, found by its name"
    )
    report.add_argument(
        "--format",
        choices=("table", "json", "prometheus", "html", "perfetto"),
        default="table",
        help="html: one self-contained page (charts inline), written to -o FILE; perfetto: "
        "every rank's compile timeline as a Chrome Trace Event file (ui.perfetto.dev)",
    )
    report.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    report.add_argument("--config", metavar="F", help="config whose labels and limits apply")
    report.set_defaults(func=cmd_report)


def _add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run a YAML-configured training job on Ray with capture on every worker",
        description="Run JOB (see config/jobs/) on the Ray cluster it names, or on a new "
        "local one: start the collectors, run the entrypoint with aotwatch's runtime_env, "
        "show progress, print the report. Exits non-zero if the job failed.",
    )
    run.add_argument("job", help="the job file, e.g. config/jobs/demo.yaml")
    run.add_argument(
        "--linger",
        type=float,
        default=0,
        metavar="S",
        help="keep serving metrics S seconds after the report",
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="print Ray's and the workers' log lines as Ray does (default: to a log file)",
    )
    run.set_defaults(func=cmd_run)


def _add_cluster_commands(commands: Any) -> None:
    for name, func, text in (
        ("serve", cmd_serve, "run the collectors on an existing Ray cluster until interrupted"),
        ("status", cmd_status, "list collectors, attached workers and rank divergences"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--config", metavar="F", help="YAML config (default: built-in)")
        sub.add_argument("--address", help="Ray address (default: cluster.address or auto)")
        if name == "serve":
            sub.add_argument(
                "--interval",
                type=float,
                default=30,
                metavar="S",
                help="print the status every S seconds",
            )
            sub.add_argument(
                "--verbose",
                action="store_true",
                help="print Ray's and the collectors' log lines (default: to a log file)",
            )
        sub.set_defaults(func=func)


def _add_check_config(commands: Any) -> None:
    check = commands.add_parser("check-config", help="validate a config file and print it")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
