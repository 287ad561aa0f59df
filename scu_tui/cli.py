"""Command line: flags -> validated settings -> a run (headless or in the app).

Nothing heavy (MLX, Textual, datasets) is imported until the settings are valid, so
a bad flag or preset answers at once with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import signal
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from scu_tui import __version__
from scu_tui.config import MODES, Settings, apply_assignments, to_toml
from scu_tui.errors import UserError
from scu_tui.presets import list_presets, load_preset
from scu_tui.protocol import Decider, ExitCode, Mode
from scu_tui.run import Peers
from scu_tui.runfolder import check_output_dir, load_run_settings

if TYPE_CHECKING:
    from scu_tui.run import Run

TEST_RUN_STEPS = 100


def _version_line() -> str:
    parts = [f"scu-tui {__version__}"]
    for dist in ("mlx", "mlx-lm", "textual"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    from scu_tui import blas

    parts.append(f"BLAS: {blas.active or 'bundled (' + blas.reason + ')'}")
    return parts[0] + " (" + ", ".join(parts[1:]) + ")"


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as ``scu-tui: error: ...`` with exit code 2."""

    def error(self, message: str) -> Any:  # pragma: no cover - exercised via main()
        self.print_usage(sys.stderr)
        self.exit(ExitCode.BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scu-tui",
        description="Fine-tune language models with LoRA on MLX, steered by the S-SCU.",
        epilog="Exit codes: 0 done, 1 training failed, 2 bad input, 130 interrupted.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps --version on one line
    )
    parser.add_argument("--version", action="version", version=_version_line())
    train = parser.add_argument_group("training")
    train.add_argument(
        "--preset", metavar="NAME|FILE.toml", help="shipped or user preset, or a file"
    )
    train.add_argument("--model", metavar="PATH|HF_ID", help="override model.path")
    train.add_argument(
        "--data", "--dataset-path", dest="data", metavar="PATH|HF_ID", help="override data.path"
    )
    train.add_argument("--output-dir", metavar="DIR", help="where the run writes")
    train.add_argument(
        "--test-run", action="store_true", help=f"a quick {TEST_RUN_STEPS}-step run of the preset"
    )
    train.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps")
    train.add_argument("--seed", type=int, metavar="N", help="random seed")
    train.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any preset key; the value is TOML (repeatable)",
    )
    train.add_argument(
        "--mode", choices=MODES, help="S-SCU mode (default: ask in the app, auto headless)"
    )
    train.add_argument("--headless", action="store_true", help="no UI: one line per report")
    train.add_argument("--resume", metavar="DIR", help="continue a run from its latest checkpoint")
    train.add_argument("--theme", metavar="NAME", help="colour theme")

    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    presets = sub.add_parser("presets", help="list presets, or show one as TOML")
    presets_sub = presets.add_subparsers(dest="presets_command", metavar="show")
    show = presets_sub.add_parser("show", help="print a preset's resolved settings as TOML")
    show.add_argument("name", metavar="NAME|FILE.toml")
    replay = sub.add_parser(
        "replay", help="run the S-SCU over a finished run's events and print its proposals"
    )
    replay.add_argument("run_dir", metavar="DIR")
    replay.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override settings for the replay (e.g. scu.control_frequency=20)",
    )
    attach = sub.add_parser(
        "attach",
        help="watch and steer a run that is going in another process (or see a finished one)",
    )
    attach.add_argument(
        "run_dir",
        metavar="DIR",
        nargs="?",
        help="the run's folder (default: the live one in runs/)",
    )
    attach.add_argument("--theme", dest="attach_theme", metavar="NAME", help="colour theme")
    check = sub.add_parser(
        "check",
        help="training readiness: environment, model, data, memory and time, a verdict",
        description="Will this run fit, and how long will it take? Takes a run's flags; "
        "works from a model's config.json alone (no weights: no timing).",
    )
    for action in train._group_actions:  # exactly a run's flags, after the subcommand too
        flag = copy.copy(action)
        flag.default = argparse.SUPPRESS  # keep what was given before `check`
        check._add_action(flag)
    compare = sub.add_parser(
        "compare",
        help="did the fine-tune help? the base model and the run's adapters on its test split",
    )
    compare.add_argument("run_dir", metavar="DIR")
    compare.add_argument(
        "--samples", type=int, default=8, metavar="N", help="prompts to answer (default 8)"
    )
    compare.add_argument(
        "--max-tokens", type=int, default=48, metavar="N", help="tokens per answer (default 48)"
    )
    generate = sub.add_parser(
        "generate", help="try a run's adapters: its model, its best adapters, its chat template"
    )
    generate.add_argument("run_dir", metavar="DIR")
    generate.add_argument("--prompt", metavar="TEXT", help="default: a prompt of its test split")
    generate.add_argument("--max-tokens", type=int, default=64, metavar="N")
    generate.add_argument("--base", action="store_true", help="the base model, no adapters")
    fuse = sub.add_parser(
        "fuse",
        help="the base model with the run's best adapters fused in, as an MLX model folder",
    )
    fuse.add_argument("run_dir", metavar="DIR")
    fuse.add_argument("--to", metavar="FOLDER", help="where it goes (default: DIR/fused)")
    fuse.add_argument(
        "--dequantize",
        action="store_true",
        help="write float weights (a quantized base otherwise stays quantized)",
    )
    fuse.add_argument(
        "--gguf", action="store_true", help="also a GGUF file (llama, mistral, mixtral)"
    )
    export = sub.add_parser(
        "export", help="a run's metrics and decisions as CSV (and TensorBoard event files)"
    )
    export.add_argument("run_dir", metavar="DIR")
    export.add_argument("--to", metavar="FOLDER", help="where the files go (default: DIR/export)")
    export.add_argument(
        "--tensorboard", action="store_true", help="also TensorBoard files (the extra)"
    )
    check.add_argument("--json", action="store_true", help="one JSON object on stdout")
    check.add_argument(
        "--find-lr", action="store_true", help="LR range test: a starting learning rate"
    )
    probing = check.add_mutually_exclusive_group()
    probing.add_argument(
        "--probe",
        action="store_const",
        const="always",
        dest="probe",
        help="run the probe's steps however long they take (by default, when they would "
        "take over 10 minutes on this machine, the estimate is from config.json)",
    )
    probing.add_argument(
        "--config-only",
        action="store_const",
        const="never",
        dest="probe",
        help="run no step: the estimate from config.json alone",
    )
    check.add_argument(
        "--ranks",
        type=int,
        metavar="N",
        help="also train one rank and N over loopback (mlx.launch, ring): tokens/s",
    )
    return parser


def _assigned(args: argparse.Namespace) -> set[str]:
    """The keys the user set with ``--set``."""
    return {a.partition("=")[0].strip() for a in args.assignments}


def _same_folder(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Merge defaults < preset < --set < dedicated flags, validating each layer."""
    if args.resume:
        if args.preset:
            raise UserError("--resume continues a run with its own settings; drop --preset")
        if args.output_dir and not _same_folder(args.output_dir, args.resume):
            raise UserError(
                f"--output-dir {args.output_dir} with --resume {args.resume}: a resumed run "
                "writes to its own folder; drop --output-dir"
            )
        settings = load_run_settings(Path(args.resume))
    else:
        settings = load_preset(args.preset or "demo")
    settings = apply_assignments(settings, list(args.assignments))
    flags: dict[str, Any] = {}
    if args.model is not None:
        flags["model.path"] = args.model
    if args.data is not None:
        flags["data.path"] = args.data
        if "data.format" not in _assigned(args):  # the preset's format is for its own data
            flags["data.format"] = "auto"
    if args.test_run:
        t = settings.training
        flags["training.max_steps"] = TEST_RUN_STEPS
        flags["training.eval_every"] = min(t.eval_every, TEST_RUN_STEPS // 4)
        flags["training.save_every"] = min(t.save_every, TEST_RUN_STEPS // 2)
    if args.max_steps is not None:
        flags["training.max_steps"] = args.max_steps
    if args.seed is not None:
        flags["training.seed"] = args.seed
    if args.mode is not None:
        flags["scu.mode"] = args.mode
    elif args.headless and "scu.mode" not in _assigned(args):
        flags["scu.mode"] = Mode.AUTO.value
    if args.theme is not None:
        flags["ui.theme"] = args.theme
    return settings.replace(flags, source="command line")


def _cmd_presets(args: argparse.Namespace) -> int:
    if args.presets_command == "show":
        print(to_toml(load_preset(args.name)), end="")
        return ExitCode.OK
    presets = list_presets()
    width = max((len(p.name) for p in presets), default=4)
    print(f"{'NAME':<{width}}  ORIGIN   DESCRIPTION")
    for p in presets:
        print(f"{p.name:<{width}}  {p.origin:<7}  {p.description}")
    return ExitCode.OK


def _cmd_replay(args: argparse.Namespace) -> int:
    from scu_tui.replay import print_replay

    run_dir = Path(args.run_dir)
    settings = apply_assignments(load_run_settings(run_dir), list(args.assignments))
    return print_replay(run_dir, settings, sys.stdout)


def _choose_run(runs: list[Path]) -> Path | None:
    """Several live runs and a person at a terminal: ask which (None: no terminal)."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return None
    for number, run in enumerate(runs, start=1):
        print(f"  {number}  {run}")
    while True:
        try:
            answer = input(f"Attach to which run? [1-{len(runs)}] ").strip()
        except EOFError:
            return None
        if answer.isdigit() and 1 <= int(answer) <= len(runs):
            return runs[int(answer) - 1]
        print(f"  a number from 1 to {len(runs)}, please")


def _needs_terminal() -> None:
    """The app draws on a terminal: without one (output to a file, no input) say so."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UserError(
            "the dashboard needs a terminal (stdin and stdout are not one); "
            "train with --headless, or attach from a terminal"
        )


def _cmd_attach(args: argparse.Namespace) -> int:
    """The dashboard, fed from a run's folder and steering it over its control socket."""
    from scu_tui.app import attach_app
    from scu_tui.remote.attach import find_live_run

    run_dir = Path(args.run_dir) if args.run_dir else find_live_run(Path("runs"), _choose_run)
    app = attach_app(run_dir, theme=args.attach_theme or args.theme)  # checks the folder
    _needs_terminal()
    app.run()
    return ExitCode.OK


def _cmd_check(args: argparse.Namespace) -> int:
    """Training readiness before training: the run's settings, a few probe steps, a verdict."""
    settings = settings_from_args(args)
    from scu_tui.check.runner import run_check

    return run_check(
        settings,
        as_json=args.json,
        find_lr=args.find_lr,
        ranks=args.ranks,
        probe=getattr(args, "probe", None) or "auto",
    )


def _run_dir(text: str) -> tuple[Path, Settings]:
    run_dir = Path(text)
    return run_dir, load_run_settings(run_dir)


def _cmd_compare(args: argparse.Namespace) -> int:
    from scu_tui.compare import COMPARISON_FILE, compare_run

    if args.samples < 0 or args.max_tokens < 1:
        raise UserError("--samples must be >= 0 and --max-tokens >= 1")
    run_dir, settings = _run_dir(args.run_dir)
    result = compare_run(run_dir, settings, samples=args.samples, max_tokens=args.max_tokens)
    print("\n".join(result.lines()))
    print(f"written to {run_dir / COMPARISON_FILE}")
    return ExitCode.OK


def _cmd_generate(args: argparse.Namespace) -> int:
    from scu_tui.generate import generate_with_run

    if args.max_tokens < 1:
        raise UserError("--max-tokens must be >= 1")
    run_dir, settings = _run_dir(args.run_dir)
    prompt, answer = generate_with_run(
        run_dir, settings, args.prompt, max_tokens=args.max_tokens, base=args.base
    )
    print(f"prompt: {prompt}\n{answer}")
    return ExitCode.OK


def _cmd_fuse(args: argparse.Namespace) -> int:
    from scu_tui.fuse import fuse_run

    run_dir, settings = _run_dir(args.run_dir)
    to = Path(args.to) if args.to else None
    result = fuse_run(run_dir, settings, to, dequantize=args.dequantize, gguf=args.gguf)
    print("\n".join(result.lines()))
    return ExitCode.OK


def _cmd_export(args: argparse.Namespace) -> int:
    from scu_tui.export import write_csv, write_tensorboard

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"export {run_dir}: no such directory")
    out = Path(args.to) if args.to else run_dir / "export"
    if out.exists() and not out.is_dir():
        raise UserError(f"export --to {out}: is a file, not a directory")
    for path in write_csv(run_dir, out):
        print(f"wrote {path}")
    if args.tensorboard:
        folder = write_tensorboard(run_dir, out / "tensorboard")
        print(f"wrote {folder} (tensorboard --logdir {folder})")
    return ExitCode.OK


def install_signal_handlers(run: Run) -> None:
    """SIGINT, SIGTERM and SIGHUP stop after this step with a checkpoint and exit 130.

    A second signal only says so (a quick double Ctrl-C must not lose the save); a third
    quits at once without a checkpoint, but never in the middle of writing one.
    """
    hits = {"n": 0}

    def handler(signum: int, frame: FrameType | None) -> None:
        hits["n"] += 1
        if hits["n"] == 1:
            run.request_stop(Decider.SIGNAL)
        if hits["n"] <= 2 or run.folder.saving:
            with contextlib.suppress(OSError):  # os.write: safe inside a signal handler
                os.write(2, STOPPING_NOTE if hits["n"] == 1 else STILL_STOPPING_NOTE)
            return
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


STOPPING_NOTE = (
    b"scu-tui: stopping after this step with a checkpoint (interrupt twice more to quit at "
    b"once without one)\n"
)
STILL_STOPPING_NOTE = b"scu-tui: still stopping: the checkpoint is being saved\n"


def run_headless(
    settings: Settings, output_dir: Path | None, resume: Path | None, peers: Peers | None = None
) -> int:
    """Train on this thread with console output and the control socket; returns the exit
    code. ``peers``: the other ranks, when this is rank 0 of a data-parallel run."""
    from scu_tui.remote.control import listening_run
    from scu_tui.sinks import ConsoleSink

    run = listening_run(settings, output_dir=output_dir, resume=resume)
    run.peers = peers
    run.add_sink(ConsoleSink(settings.training.report_every))
    install_signal_handlers(run)
    try:
        return run.execute()
    except UserError:
        if peers is not None:
            peers.finish(ExitCode.BAD_INPUT)  # the other ranks wait for word from this one
        raise


def _train_distributed(args: argparse.Namespace, group: Any) -> int:
    """A rank of ``mlx.launch``: rank 0 runs the run, the others follow it."""
    from scu_tui.training.distributed import Channel, Leader, check_batch, follow

    if group.rank() > 0:
        return follow(group)
    try:
        if not args.headless:
            raise UserError(
                "a run on several ranks trains without the dashboard: add --headless "
                "(and watch it with scu-tui attach DIR)"
            )
        settings = settings_from_args(args)
        check_batch(settings.training.batch_size, int(group.size()))
        output_dir = Path(args.output_dir) if args.output_dir else None
        if output_dir is not None and not args.resume:
            check_output_dir(output_dir)
    except UserError:
        Channel(group).exchange([["stop", ExitCode.BAD_INPUT]])  # the others end quietly
        raise
    resume = Path(args.resume) if args.resume else None
    return run_headless(settings, output_dir, resume, peers=Leader(group, settings))


def _cmd_train(args: argparse.Namespace) -> int:
    from scu_tui.training import distributed

    if distributed.launched():
        group = distributed.init_group()
        if group.size() > 1:
            return _train_distributed(args, group)
    settings = settings_from_args(args)
    output_dir = Path(args.output_dir) if args.output_dir else None
    if output_dir is not None and not args.resume:
        check_output_dir(output_dir)  # before the app takes the terminal
    resume = Path(args.resume) if args.resume else None
    if args.headless:
        return run_headless(settings, output_dir=output_dir, resume=resume)

    from scu_tui.themes import find_theme

    find_theme(settings.ui.theme)  # an unknown theme is bad input, before Textual loads
    _needs_terminal()

    def load(name: str) -> Settings:
        """A preset picked in the app, with this command line's overrides on top."""
        return settings_from_args(argparse.Namespace(**{**vars(args), "preset": name}))

    from scu_tui.app import make_app
    from scu_tui.remote.control import listening_run

    pick = not (args.preset or args.resume or args.model or args.data)
    app = make_app(
        None if pick else settings,
        output_dir=output_dir,
        resume=resume,
        run_factory=listening_run,
        load=load,
        theme=settings.ui.theme,
    )
    app.run()
    done = app.state.done
    if done is not None and not app.attached:  # the terminal is back: say where it went
        from scu_tui.sinks import format_event

        print(format_event(done))
    if app.signalled or app.return_code is None:
        return app.exit_code
    return app.return_code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "presets":
            return _cmd_presets(args)
        if args.command == "replay":
            return _cmd_replay(args)
        if args.command == "attach":
            return _cmd_attach(args)
        if args.command == "check":
            return _cmd_check(args)
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "generate":
            return _cmd_generate(args)
        if args.command == "fuse":
            return _cmd_fuse(args)
        if args.command == "export":
            return _cmd_export(args)
        return _cmd_train(args)
    except UserError as exc:
        message = " ".join(str(exc).splitlines())  # one line, whatever the input held
        print(f"scu-tui: error: {message}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
