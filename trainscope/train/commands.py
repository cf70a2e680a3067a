"""CLI commands of the reference trainer, mounted by `trainscope.cli` through `register(app)`.

    trainscope train --preset NAME --out RUN_DIR [--config FILE] [--scale X] [--seed N] [--epochs N] [--quiet]
    trainscope lr-find --preset NAME [--config FILE] [--scale X] [--steps N] [--csv PATH]
    trainscope lr-find --model FILE.py:FUNC --data FILE.py:FUNC [--criterion FILE.py:FUNC] [--optimizer ..]
    trainscope check --preset NAME [--config FILE] [--scale X]
    trainscope check --model FILE.py:FUNC --data FILE.py:FUNC [--criterion FILE.py:FUNC] [--optimizer NAME --lr X]
    trainscope compare RUN... [--format text|markdown|json] [--html PATH] [--no-diagnose]
    trainscope presets

Exit codes: 0 fine, 1 a check failed (check), 2 bad input (one line on stderr, no traceback).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from trainscope.errors import TrainscopeError


def _fail(message: str) -> typer.Exit:
    typer.echo(f"trainscope: error: {message}", err=True)
    return typer.Exit(2)


def _experiment(preset: Optional[str], config: Optional[Path], scale: Optional[float], seed: Optional[int],
                epochs: Optional[int] = None) -> Any:
    from trainscope.train.presets import build, load_config

    if (preset is None) == (config is None):
        raise TrainscopeError("give exactly one of --preset NAME or --config FILE (`trainscope presets` lists them)")
    cfg: Any = load_config(config) if config is not None else preset
    overrides = {"train": {"epochs": epochs}} if epochs is not None else None
    return build(cfg, scale=scale, seed=seed, overrides=overrides)


def _user_only(preset: Optional[str], config: Optional[Path], model: Optional[str], data: Optional[str]) -> None:
    if preset is not None or config is not None:
        raise TrainscopeError("give either --preset/--config or --model and --data, not both")
    if model is None or data is None:
        raise TrainscopeError("your own model needs both --model FILE.py:FUNC and --data FILE.py:FUNC")


def _user_optimizer(spec: Optional[str], lr: Optional[float], sgd_default: bool = False) -> Any:
    from trainscope.train.user_code import optimizer_factory

    if spec is not None and ":" not in spec and spec.lower() not in ("adam", "adamw", "sgd"):
        raise TrainscopeError(f"--optimizer must be adam, adamw, sgd or FILE.py:FUNC, not {spec!r}")
    if spec is None and lr is None and sgd_default:
        return None  # find_lr's own default: SGD with momentum 0.9
    return optimizer_factory(spec, lr)


def register(app: typer.Typer) -> None:
    """Add train, lr-find, check, compare and presets to the trainscope CLI."""

    @app.command("train")
    def train(
        out: Path = typer.Option(..., "--out", "-o", help="Run directory to record into (must not exist yet)."),
        preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Preset name (see `trainscope presets`)."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file (may start from a preset)."),
        scale: Optional[float] = typer.Option(None, "--scale", help="Data sizes and hidden widths x SCALE."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0)."),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the number of epochs."),
        checkpoints: Optional[Path] = typer.Option(None, "--checkpoints", help="Save checkpoints in this folder."),
        resume: Optional[Path] = typer.Option(None, "--resume", help="Resume from a checkpoint file or folder."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output; only the final line."),
        threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (1 is fastest for these "
                                              "small MLPs on a busy machine)."),
    ) -> None:
        """Train a preset or config with the reference trainer, recording the run with trainscope.watch."""
        from trainscope.train.loop import Trainer

        try:
            if threads is not None:
                if threads < 1:
                    raise TrainscopeError("--threads must be >= 1")
                import torch

                torch.set_num_threads(threads)
            exp = _experiment(preset, config, scale, seed, epochs)
            if out.exists() and (not out.is_dir() or any(out.iterdir())):
                raise TrainscopeError(f"{out} already exists and is not empty; choose a new --out")
            if checkpoints is not None:
                exp.train_config.checkpoint_dir = str(checkpoints)
            if not quiet:
                typer.echo(f"{exp.name}: {exp.config.get('description', '')}", err=True)
                typer.echo(f"data: {exp.splits.description}", err=True)
            trainer = Trainer(exp.model, exp.optimizer, exp.criterion, exp.splits.train, exp.splits.val,
                              config=exp.train_config, schedule=exp.schedule, test_data=exp.splits.test,
                              run_dir=out, run_name=exp.name, run_config=exp.config, quiet=quiet)
            history = trainer.fit(resume_from=resume)
        except TrainscopeError as e:
            raise _fail(str(e)) from None
        final = " ".join(f"{k}={v:.4g}" for k, v in history.final.items() if isinstance(v, float) and not math.isnan(v))
        typer.echo(f"{out}: {len(history.epochs)} epochs, best epoch {history.best_epoch}; {final}")
        typer.echo(f"next: trainscope diagnose {out}")

    @app.command("lr-find")
    def lr_find(
        preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Preset name."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file."),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Your model: FILE.py:FUNC, FUNC() returns "
                                            "the nn.Module."),
        data: Optional[str] = typer.Option(None, "--data", "-d", help="Your data: FILE.py:FUNC, FUNC() returns an "
                                           "iterable of (inputs, targets) batches."),
        criterion: Optional[str] = typer.Option(None, "--criterion", help="FILE.py:FUNC returning the loss "
                                                "[default: CrossEntropyLoss for integer targets, else MSELoss]."),
        optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adam, adamw, sgd or FILE.py:FUNC "
                                                "(FUNC(params) -> optimizer) [default: SGD, momentum 0.9]."),
        scale: Optional[float] = typer.Option(None, "--scale", help="Data sizes and hidden widths x SCALE."),
        seed: Optional[int] = typer.Option(None, "--seed"),
        steps: int = typer.Option(100, "--steps", help="Steps of the sweep."),
        start_lr: float = typer.Option(1e-7, "--start-lr"),
        end_lr: float = typer.Option(10.0, "--end-lr"),
        csv: Optional[Path] = typer.Option(None, "--csv", help="Write the curve (lr, loss, smoothed) here."),
    ) -> None:
        """Smith's learning-rate range test on a preset or on your own model and data; prints the suggested lr."""
        from trainscope.train.lr_finder import find_lr

        try:
            if model is not None or data is not None:
                from trainscope.train import user_code
                from trainscope.train.sanity import lr_find as user_lr_find

                _user_only(preset, config, model, data)
                m = user_code.load_model(model)  # type: ignore[arg-type]
                result = user_lr_find(m, user_code.load_data(data), user_code.load_criterion(criterion),  # type: ignore[arg-type]
                                      optimizer_factory=_user_optimizer(optimizer, None, sgd_default=True),
                                      start_lr=start_lr, end_lr=end_lr, num_steps=steps,
                                      seed=seed if seed is not None else 0)
            else:
                exp = _experiment(preset, config, scale, seed)
                result = find_lr(exp.model, exp.splits.train, exp.criterion, exp.optimizer, start_lr=start_lr,
                                 end_lr=end_lr, num_steps=steps, batch_size=exp.train_config.batch_size,
                                 seed=exp.train_config.seed)
        except TrainscopeError as e:
            raise _fail(str(e)) from None
        typer.echo(result.summary())
        frame = result.to_frame()
        for _, row in frame.iloc[:: max(1, len(frame) // 12)].iterrows():
            typer.echo(f"  lr {row['lr']:.2e}  loss {row['loss']:.4f}  smoothed {row['smoothed']:.4f}")
        if csv is not None:
            frame.to_csv(csv, index=False)
            typer.echo(f"curve written to {csv}")

    @app.command("check")
    def check(
        preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Preset name."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file."),
        model: Optional[str] = typer.Option(None, "--model", "-m", help="Your model: FILE.py:FUNC, FUNC() returns "
                                            "the nn.Module."),
        data: Optional[str] = typer.Option(None, "--data", "-d", help="Your data: FILE.py:FUNC, FUNC() returns an "
                                           "iterable of (inputs, targets) batches."),
        criterion: Optional[str] = typer.Option(None, "--criterion", help="FILE.py:FUNC returning the loss "
                                                "[default: CrossEntropyLoss for integer targets, else MSELoss]."),
        optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adam, adamw, sgd or FILE.py:FUNC "
                                                "(FUNC(params) -> optimizer) [default: Adam lr 1e-3]."),
        lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate for --optimizer."),
        num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classes, when the output does "
                                                  "not tell."),
        scale: Optional[float] = typer.Option(None, "--scale", help="Data sizes and hidden widths x SCALE."),
        seed: Optional[int] = typer.Option(None, "--seed"),
        steps: int = typer.Option(500, "--steps", help="Steps of the overfit-one-batch test."),
        baseline_epochs: int = typer.Option(3, "--baseline-epochs", help="Presets: epochs per input-independent "
                                            "baseline run (0 skips it)."),
        baseline_steps: int = typer.Option(100, "--baseline-steps", help="Your model: optimizer steps per "
                                           "input-independent baseline run (0 skips it)."),
    ) -> None:
        """The checklist's sanity checks: data peek, initial loss, overfit one batch, zeroed-input baseline."""
        from trainscope.train.sanity import run_checks

        try:
            if model is not None or data is not None:
                from trainscope.train import user_code
                from trainscope.train.sanity import check as user_check

                _user_only(preset, config, model, data)
                m = user_code.load_model(model)  # type: ignore[arg-type]
                report = user_check(m, user_code.load_data(data), user_code.load_criterion(criterion),  # type: ignore[arg-type]
                                    optimizer_factory=_user_optimizer(optimizer, lr), num_classes=num_classes,
                                    steps=steps, baseline_steps=baseline_steps,
                                    seed=seed if seed is not None else 0)
                results = report.results
            else:
                exp = _experiment(preset, config, scale, seed)
                results = run_checks(exp, overfit_steps=steps, baseline_epochs=baseline_epochs)
        except TrainscopeError as e:
            raise _fail(str(e)) from None
        for r in results:
            typer.echo(r.line())
        failed = [r.name for r in results if not r.passed]
        ran = [r for r in results if not r.values.get("skipped")]
        typer.echo(f"{len(ran) - len(failed)}/{len(ran)} checks passed" +
                   (f"; failed: {', '.join(failed)}" if failed else ""))
        if failed:
            raise typer.Exit(1)

    @app.command("compare")
    def compare_cmd(
        runs: List[Path] = typer.Argument(..., help="Run directories to compare, in order."),
        format: str = typer.Option("text", "--format", "-f", help="text, markdown or json."),
        html: Optional[Path] = typer.Option(None, "--html", help="Also write loss curves + table as HTML."),
        no_diagnose: bool = typer.Option(False, "--no-diagnose", help="Skip the diagnosis column."),
    ) -> None:
        """The case study's comparison table: val AUC/acc, val loss, epochs to best, gap, time, diagnosis."""
        from trainscope.train.compare import compare, format_table, to_markdown, write_html

        try:
            if format not in ("text", "markdown", "json"):
                raise TrainscopeError(f"--format must be text, markdown or json, not {format!r}")
            for r in runs:
                if not r.exists():
                    raise TrainscopeError(f"{r}: no such file or directory")
            table, summaries = compare(list(runs), diagnose=not no_diagnose)
        except TrainscopeError as e:
            raise _fail(str(e)) from None
        from trainscope.train.config_diff import config_diff, format_diff

        metas = [s.meta for s in summaries]
        if format == "json":
            rows = json.loads(table.to_json(orient="records"))
            _, values, _ = config_diff(metas)
            for i, (row, s) in enumerate(zip(rows, summaries)):
                row["findings"] = [f.to_dict() for f in s.findings]
                row["config_differences"] = {k: v[i] for k, v in values.items()}
            typer.echo(json.dumps(rows, indent=2))
        else:
            typer.echo(to_markdown(table) if format == "markdown" else format_table(table))
            if len(summaries) > 1:
                typer.echo("")
                typer.echo(format_diff([s.name for s in summaries], metas, markdown=format == "markdown"))
        if html is not None:
            write_html(summaries, table, html)
            typer.echo(f"wrote {html}", err=True)

    @app.command("presets")
    def presets_cmd() -> None:
        """List the training presets."""
        from trainscope.train.presets import PRESETS

        width = max(len(n) for n in PRESETS)
        for name, p in PRESETS.items():
            typer.echo(f"{name.ljust(width)}  {p.get('description', '')}")


if __name__ == "__main__":  # pragma: no cover
    app = typer.Typer()
    register(app)
    app()
    sys.exit(0)
