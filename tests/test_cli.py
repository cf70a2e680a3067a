"""`trainscope diagnose / rules / rule`: output, JSON schema, exit codes, bad input without tracebacks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers_training import mlp, teacher_task, train
from trainscope.cli import app

DATA = Path(__file__).parent / "data"
STREAMREC = DATA / "streamrec_baseline.csv"
runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture()
def streamrec(tmp_path) -> Path:
    p = tmp_path / "streamrec.csv"
    p.write_text(STREAMREC.read_text())
    return p


def test_text_output_is_linter_like(streamrec):
    r = invoke("diagnose", streamrec, "--no-html")
    assert r.exit_code == 0  # warnings only, default --fail-on error
    lines = r.output.splitlines()
    assert lines[0].startswith(f"{streamrec}: TS103 warning overfitting  val loss lowest 0.562 at epoch 13")
    assert any(line.strip().startswith("fix 1: Keep the checkpoint from epoch 13") for line in lines)
    assert any("see: playbook 7.8.1 Pattern 3" in line for line in lines)
    summary = [line for line in lines if line.startswith("3 findings")]
    assert summary and "2 warnings, 1 info" in summary[0] and "could not run (" in summary[0] \
        and "no layer statistics" in summary[0]


def test_fail_on_controls_exit_code(streamrec):
    assert invoke("diagnose", streamrec, "--no-html", "--fail-on", "warning").exit_code == 1
    assert invoke("diagnose", streamrec, "--no-html", "--fail-on", "info").exit_code == 1
    assert invoke("diagnose", streamrec, "--no-html", "--fail-on", "never").exit_code == 0
    assert invoke("diagnose", streamrec, "--no-html", "--select", "TS101,TS102", "--fail-on", "info").exit_code == 0


def test_json_schema(streamrec):
    r = invoke("diagnose", streamrec, "--format", "json", "--no-html")
    data = json.loads(r.stdout)
    assert data["run"] == "streamrec" and data["source"] == "csv"
    keys = {"name", "code", "severity", "message", "layers", "steps", "evidence", "fixes", "reference"}
    assert data["findings"] and all(keys <= set(f) for f in data["findings"])
    first = data["findings"][0]
    assert first["name"] == "overfitting" and first["evidence"]["best_epoch"] == 13 and first["steps"] == [13, 50]
    assert all({"name", "code", "reason"} <= set(s) for s in data["skipped"])


def test_error_exit_code_on_a_real_failing_run(tmp_path):
    run_dir = tmp_path / "diverged"
    train(run_dir, mlp(), teacher_task(n=1024), epochs=2, optimizer="sgd", lr=20.0)
    r = invoke("diagnose", run_dir, "--no-html", "--select", "TS1")
    assert r.exit_code == 1 and "TS102 error divergence" in r.output


def test_select_ignore_and_set(streamrec):
    r = invoke("diagnose", streamrec, "--no-html", "--select", "TS1", "--ignore", "slow-start",
               "--set", "no-early-stopping.patience=5", "--format", "json")
    data = json.loads(r.stdout)
    assert {f["name"] for f in data["findings"]} == {"overfitting", "no-early-stopping"}
    nes = next(f for f in data["findings"] if f["name"] == "no-early-stopping")
    assert nes["evidence"]["stop_epoch"] == 18


def test_config_in_cwd_and_explicit(streamrec, tmp_path, monkeypatch):
    cfg = tmp_path / "cfgdir"
    cfg.mkdir()
    (cfg / "trainscope.toml").write_text('select = ["TS1"]\nfail-on = "warning"\n')
    monkeypatch.chdir(cfg)
    assert invoke("diagnose", streamrec, "--no-html").exit_code == 1  # fail-on from the config
    assert invoke("diagnose", streamrec, "--no-html", "--fail-on", "error").exit_code == 0  # CLI wins
    monkeypatch.chdir(tmp_path)
    assert invoke("diagnose", streamrec, "--no-html", "--config", cfg / "trainscope.toml").exit_code == 1


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--select", "overfit"], "valid names: loss-not-decreasing"),
        (["--ignore", "TS9"], "unknown rule 'TS9'"),
        (["--set", "overfitting.nope=1"], "valid parameters: min_evals"),
        (["--set", "overfitting=1"], "expected NAME.param=value"),
        (["--set", "nosuchrule.x=1"], "unknown rule 'nosuchrule'"),
        (["--config", "/nonexistent/trainscope.toml"], "does not exist"),
    ],
)
def test_bad_options_exit_2_with_one_line(streamrec, args, needle):
    r = invoke("diagnose", streamrec, "--no-html", *args)
    assert r.exit_code == 2
    assert needle in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_bad_runs_exit_2_with_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    (corrupt / "scalars").mkdir(parents=True)
    (corrupt / "meta.json").write_text("{not json")
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(os.urandom(2048) + b"\x00")
    noloss = tmp_path / "noloss.csv"
    noloss.write_text("step,acc\n1,0.5\n")
    for bad in (tmp_path / "missing", empty, corrupt, garbage, noloss, tmp_path / "x.parquet"):
        r = invoke("diagnose", bad, "--no-html")
        assert r.exit_code == 2, (bad, r.output)
        assert r.output.startswith("trainscope: error:") and len(r.output.strip().splitlines()) == 1, r.output


def test_corrupt_chunk_in_a_real_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, mlp(), teacher_task(n=256), epochs=1)
    chunk = sorted((run_dir / "scalars").glob("*.parquet"))[0]
    chunk.write_bytes(b"PAR1 truncated")
    r = invoke("diagnose", run_dir, "--no-html")
    assert r.exit_code == 2 and "corrupt" in r.output


def test_html_report_default_location_and_opt_out(streamrec, tmp_path):
    pytest.importorskip("trainscope.report")
    r = invoke("diagnose", streamrec)
    assert (tmp_path / "streamrec.report.html").exists(), r.output
    out = tmp_path / "custom.html"
    invoke("diagnose", streamrec, "--html", out)
    assert out.exists()
    run_dir = tmp_path / "run"
    train(run_dir, mlp(), teacher_task(n=256), epochs=1)
    invoke("diagnose", run_dir)
    assert (run_dir / "report.html").exists()
    assert invoke("diagnose", streamrec, "--html", out, "--no-html").exit_code == 2


def test_rules_table_and_rule_doc():
    r = invoke("rules")
    assert r.exit_code == 0 and r.output.splitlines()[0].split()[:4] == ["code", "name", "severity", "family"]
    assert any(line.startswith("TS103  overfitting") for line in r.output.splitlines())
    doc = invoke("rule", "TS106")
    assert doc.exit_code == 0
    for heading in ("What it does", "Why is this bad?", "Example", "Use instead", "Known false positives", "Options"):
        assert heading in doc.output
    assert "patience = 3" in doc.output
    assert invoke("rule", "no-early-stopping").output == doc.output
    bad = invoke("rule", "nope")
    assert bad.exit_code == 2 and "valid rules:" in bad.output


def test_console_script_end_to_end(streamrec):
    """The installed entry point: real process, exit code and stderr."""
    exe = Path(sys.executable).with_name("trainscope")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "trainscope.cli"]
    ok = subprocess.run(cmd + ["diagnose", str(streamrec), "--no-html", "--fail-on", "warning"], capture_output=True, text=True)
    assert ok.returncode == 1 and "TS103 warning overfitting" in ok.stdout
    bad = subprocess.run(cmd + ["diagnose", str(streamrec) + ".missing"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_other_packages_commands_are_mounted_and_a_broken_one_is_skipped(monkeypatch):
    import importlib.util
    import types

    import typer

    import trainscope.cli as cli

    names = {c.name or c.callback.__name__ for c in cli.app.registered_commands}
    if importlib.util.find_spec("trainscope.report.commands"):
        assert "report" in names
    broken = types.ModuleType("trainscope.broken_ext")

    def register(app: typer.Typer) -> None:
        raise RuntimeError("bug in an extension")

    broken.register = register
    monkeypatch.setitem(sys.modules, "trainscope.broken_ext", broken)
    monkeypatch.setattr(cli, "EXTENSIONS", ("trainscope.broken_ext", "trainscope.not_there.commands"))
    monkeypatch.setattr(cli, "MOUNT_ERRORS", {})
    cli._mount_extensions()
    assert list(cli.MOUNT_ERRORS) == ["trainscope.broken_ext"]  # recorded; a missing module is silent
    assert invoke("rules").exit_code == 0


def test_main_turns_a_trainscope_error_from_any_command_into_exit_2(monkeypatch, capsys):
    import typer

    import trainscope.cli as cli
    from trainscope.errors import TrainscopeError

    app = typer.Typer()

    @app.command()
    def explode() -> None:
        raise TrainscopeError("bad preset 'x'; valid presets: a, b")

    @app.command()
    def other() -> None:
        pass

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(sys, "argv", ["trainscope", "explode"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "trainscope: error: bad preset 'x'; valid presets: a, b\n"
