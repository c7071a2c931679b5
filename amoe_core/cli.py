"""`amoe <group> <command>`: parses arguments, loads params.yaml (+ `-S` overrides), calls the stage function.

Thin by design: all behaviour lives in the stage functions of `amoe_core.stages`, which DVC, Prefect, submitit and
the tests call too. User errors (`AmoeError`) print one line and exit with code 2. The handlers import what they call
when they run (start-up time: `amoe --help` must not import torch, transformers or streamlit).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from amoe_core.config.describe import describe
from amoe_core.config.load import load_params
from amoe_core.config.params import Params
from amoe_core.errors import AmoeError
from amoe_core.io import USER_OS_ERRORS, os_error_line
from amoe_core.progress import setup_logging
from amoe_core.stages import stage_function

log = logging.getLogger("amoe")


class _Parser(argparse.ArgumentParser):
    """argparse with a did-you-mean: `amoe distil` names `distill` (argparse only lists every choice)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'?([\w-]+)'?", m.group(2))
            near = difflib.get_close_matches(m.group(1), choices, n=1)
            if near:
                message += f"; did you mean {near[0]!r}?"
        super().error(message)


def _version() -> str:
    try:
        return version("amoe-core")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _common() -> argparse.ArgumentParser:
    p = _Parser(add_help=False)
    p.add_argument("--params", default=None, help="params file (default: ./params.yaml, else built-in defaults)")
    p.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter, e.g. -S ingest.max_side=256 (repeatable, DVC's spelling)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _stage(name: str, **extra: Callable[[argparse.Namespace], Any]) -> Callable[[Params, argparse.Namespace], Any]:
    """A handler that calls stage `name` with keyword arguments taken from the parsed command line."""

    def handler(params: Params, args: argparse.Namespace) -> Any:
        kwargs = {k: f(args) for k, f in extra.items()}
        return stage_function(name)(params, **{k: v for k, v in kwargs.items() if v is not None})

    handler.stage = name  # type: ignore[attr-defined]  # which stage a command line runs (tests/test_dvc_deps.py)
    return handler


def _model_info(params: Params, args: argparse.Namespace) -> None:
    from amoe_core.model_info import print_model_info  # start-up time (module docstring)

    print_model_info(args.names or None, params)


def _submit(params: Params, args: argparse.Namespace) -> None:
    from amoe_core.launch.submit import submit_stage  # start-up time (module docstring)

    submit_stage(params, args.stage, wait=not args.no_wait, array=args.array)


def _export(params: Params, args: argparse.Namespace) -> None:
    from amoe_core.train.export import export_run, export_siglino  # start-up time (module docstring)

    (export_siglino if args.format == "siglino" else export_run)(params, args.run, args.out)


def _params(params: Params | None, args: argparse.Namespace) -> None:
    print(describe(args.sections))


_params.no_params = True  # type: ignore[attr-defined]  # documents params.yaml: works even when that file is broken


def _dashboard(params: Params, args: argparse.Namespace) -> None:
    from amoe_core.dashboard import launch  # start-up time (module docstring)

    launch(params, args.host, args.port, args.allow_remote, args.runs, args.curation, args.storage)


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    root = _Parser(prog="amoe", description=__doc__.splitlines()[0])
    root.add_argument("--version", action="version", version=f"amoe {_version()}")
    groups = root.add_subparsers(dest="group", required=True, metavar="<group>", parser_class=_Parser)

    def command(parent, name: str, handler, help: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    data = groups.add_parser("data", help="demo pool and ingest").add_subparsers(dest="cmd", required=True)
    command(data, "demo-pool", _stage("demo-pool"), "assemble the offline demo image pool and labelled splits")
    p = command(
        data,
        "ingest",
        _stage("ingest", sources=lambda a: a.source or None, out=lambda a: a.out),
        "image sources -> validated, deduplicated WebDataset shards + manifest",
    )
    p.add_argument("--source", action="append", help="folder:PATH or shards:PATH (repeatable); default ingest.sources")
    p.add_argument("--out", default=None, help="output directory (default ingest.out)")

    teachers = groups.add_parser("teachers", help="teacher models").add_subparsers(dest="cmd", required=True)
    command(teachers, "demo", _stage("teachers-demo"), "train the two small demo teachers (DINOv3, SigLIP2) locally")
    command(
        teachers,
        "cache",
        _stage("teachers-cache"),
        "write the teachers' outputs for distill's images and grids to distill.teacher_cache (read instead of teachers)",
    )

    model = groups.add_parser("model", help="student model").add_subparsers(dest="cmd", required=True)
    p = command(model, "info", _model_info, "parameter counts (total and active) of named student configs")
    p.add_argument("names", nargs="*", help="config names (default: all)")

    curate = groups.add_parser("curate", help="embed, cluster, sample").add_subparsers(dest="cmd", required=True)
    command(curate, "embed", _stage("embed"), "embed every image of the shard set into a float16 memmap")
    command(curate, "cluster", _stage("cluster"), "hierarchical k-means with resampling")
    command(curate, "sample", _stage("sample"), "balanced hierarchical sampling and a random baseline")

    p = command(groups, "distill", _stage("distill", resume=lambda a: a.resume or None), "train the student")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")

    p = command(groups, "submit", _submit, "run a stage through submitit (SLURM, local or debug executor)")
    p.add_argument("stage", help="stage name, e.g. distill")
    p.add_argument("--no-wait", action="store_true", help="return after submission")
    p.add_argument(
        "--array",
        action="append",
        default=None,
        metavar="KEY=V1,V2",
        help="job array: one job per value of an override, e.g. --array seed=0,1,2",
    )

    p = command(groups, "export", _export, "write a trained student as a standalone model directory")
    p.add_argument("run", help="run id under distill.runs_dir, or a run directory")
    p.add_argument("--out", default=None, help="output directory (default runs/<run>/export)")
    p.add_argument(
        "--format",
        choices=("amoe", "siglino"),
        default="amoe",
        help="amoe: model.safetensors + config.json (load_pretrained); siglino: the released SigLino checkpoint.pt",
    )

    p = command(
        groups,
        "evaluate",
        _stage("evaluate", run=lambda a: a.run, teachers=lambda a: a.teachers or None, model=lambda a: a.model),
        "kNN, linear probe, cross-resolution, fidelity and PCA maps",
    )
    p.add_argument("run", nargs="?", default=None, help="run id (default distill.run)")
    p.add_argument("--teachers", action="store_true", help="evaluate the teachers' own features (baselines)")
    p.add_argument(
        "--model", default=None, help="a released model: siglino:CHECKPOINT[@CONFIG] (config.json beside it by default)"
    )

    p = groups.add_parser(
        "params",
        help="every parameter of params.yaml: key, type, default and meaning",
        description="Every parameter of params.yaml (override one with -S section.key=value): key, type, default and "
        "meaning, from the config models (amoe_core/config/).",
    )
    p.add_argument("sections", nargs="*", metavar="SECTION", help="sections to show (default: all), e.g. distill")
    p.set_defaults(handler=_params, quiet=False, verbose=False, params=None, overrides=[])

    command(groups, "sweep", _stage("sweep"), "Optuna search over batching and loss settings")
    p = command(
        groups,
        "ablate",
        _stage("ablate", collect_only=lambda a: a.collect_only or None),
        "queue and run the loss, data and batching ablations as DVC experiments, then collect their runs",
    )
    p.add_argument("--collect-only", action="store_true", help="only copy finished experiments' runs to ablate.out")
    command(groups, "report", _stage("report"), "generate docs/RESULTS.md from the runs")
    p = command(groups, "dashboard", _dashboard, "serve the Streamlit dashboard on 127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only unless --allow-remote)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (the page has no login)")
    p.add_argument("--runs", action="append", default=None, help="runs directory the page may show (repeatable)")
    p.add_argument("--curation", default=None, help="curation directory (default: sample.out's parent)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: sweep.storage)")
    return root


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet, args.verbose)
    try:
        params = None if getattr(args.handler, "no_params", False) else load_params(args.params, args.overrides)
        args.handler(params, args)
    except AmoeError as e:
        print(f"amoe: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in USER_OS_ERRORS:
            raise
        print(f"amoe: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("amoe: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
