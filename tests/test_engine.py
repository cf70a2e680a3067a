"""The rule engine: selection, parameters, config, crash isolation, root causes, ordering."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers_training import mlp, teacher_task, train
from trainscope.errors import TrainscopeError
from trainscope.rules import registry
from trainscope.rules.catalogue import load_catalogue
from trainscope.rules.engine import diagnose, diagnose_report, explain, resolve_selection, sort_findings
from trainscope.rules.finding import Finding, Severity
from trainscope.store.importers import import_log

DATA = Path(__file__).parent / "data"
STREAMREC = DATA / "streamrec_baseline.csv"


def finding(name: str, code: str, severity: str = "warning", explains=()) -> Finding:
    return Finding(name=name, code=code, severity=Severity(severity), title=name, message="m", explains=tuple(explains))


def test_diagnose_accepts_a_path_and_the_package_api():
    import trainscope

    found = trainscope.diagnose(STREAMREC, select=["TS1"])
    assert [f.name for f in found][:2] == ["overfitting", "no-early-stopping"]
    assert diagnose(import_log(STREAMREC), select=["TS1"]) == found


def test_select_by_name_code_prefix_and_ignore():
    cat = load_catalogue()
    assert resolve_selection(cat, ["overfitting"]) == ["overfitting"]
    assert resolve_selection(cat, ["TS103"]) == ["overfitting"]
    ts1 = resolve_selection(cat, ["TS1"])
    assert ts1 and all(cat[n].code.startswith("TS1") for n in ts1)
    assert "slow-start" not in resolve_selection(cat, ["TS1"], ["slow-start"])
    assert resolve_selection(cat, None, ["ALL"]) == []


def test_unknown_rule_lists_valid_names():
    with pytest.raises(TrainscopeError, match="unknown rule 'overfit'.*overfitting"):
        diagnose(STREAMREC, select=["overfit"])


def test_settings_unknown_rule_or_param_and_bad_type():
    with pytest.raises(TrainscopeError, match="valid parameters: .*patience"):
        diagnose(STREAMREC, settings={"no-early-stopping": {"patiense": 4}})
    with pytest.raises(TrainscopeError, match="unknown rule 'nope'"):
        diagnose(STREAMREC, settings={"nope": {"x": 1}})
    with pytest.raises(TrainscopeError, match="expected a int"):
        diagnose(STREAMREC, settings={"no-early-stopping": {"patience": "four"}})


def test_settings_by_code_and_int_for_float():
    report = diagnose_report(STREAMREC, select=["TS107"], settings={"TS107": {"min_speedup": 100}})
    assert report.findings == []


def test_config_file_pyproject_and_trainscope_toml(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.trainscope]\nselect = ["TS1"]\nignore = ["slow-start"]\n\n'
        "[tool.trainscope.rules.no-early-stopping]\npatience = 5\n"
    )
    found = {f.name: f for f in diagnose(STREAMREC, config_path=tmp_path)}
    assert "slow-start" not in found and found["no-early-stopping"].evidence_dict["stop_epoch"] == 18
    (tmp_path / "trainscope.toml").write_text('select = ["overfitting"]\n')  # trainscope.toml wins
    assert [f.name for f in diagnose(STREAMREC, config_path=tmp_path)] == ["overfitting"]
    (tmp_path / "trainscope.toml").write_text('selct = ["overfitting"]\n')
    with pytest.raises(TrainscopeError, match="unknown key"):
        diagnose(STREAMREC, config_path=tmp_path)


def test_rules_without_their_data_are_skipped_with_a_reason():
    report = diagnose_report(STREAMREC)  # an imported CSV: no layer statistics
    reasons = {s.name: s.reason for s in report.skipped}
    layer_rules = [n for n, r in load_catalogue().items() if "layers" in r.needs]
    assert layer_rules and all(reasons.get(n) == "no layer statistics" for n in layer_rules)
    assert "overfitting" not in reasons


def test_a_crashing_detector_becomes_an_error_entry(monkeypatch):
    def boom(ctx):
        raise ZeroDivisionError("oops")

    monkeypatch.setitem(registry.DETECTORS, "slow-start", boom)
    report = diagnose_report(STREAMREC, select=["TS1"])
    assert [c.name for c in report.crashed] == ["slow-start"] and "ZeroDivisionError" in report.crashed[0].error
    assert {"overfitting", "no-early-stopping"} <= {f.name for f in report.findings}


def test_root_cause_demotes_its_symptoms_and_comes_first():
    cat = load_catalogue()
    symptom = finding("loss-not-decreasing", "TS101", "error")
    root = finding("softmax-before-cross-entropy", "TS601", "error", explains=["loss-not-decreasing"])
    out = sort_findings(explain([symptom, root], cat), cat)
    assert [f.name for f in out] == ["softmax-before-cross-entropy", "loss-not-decreasing"]
    demoted = out[1]
    assert demoted.severity is Severity.INFO
    assert demoted.message.endswith("(explained by softmax-before-cross-entropy)")
    assert demoted.evidence_dict["explained_by"] == "softmax-before-cross-entropy"
    # a warning-level root cause of an error-level symptom becomes an error
    lr = finding("lr-too-high", "TS501", "warning", explains=["divergence"])
    out = explain([finding("divergence", "TS102", "error"), lr], cat)
    assert out[1].severity is Severity.ERROR and out[1].evidence_dict["raised_from"] == "warning"
    assert out[0].severity is Severity.INFO
    # a symptom alone is left as it is
    assert explain([symptom], cat) == [symptom]


def test_catalogue_explains_applies_without_the_detector_saying_so():
    cat = load_catalogue()
    assert "slow-start" in cat["divergence"].explains
    out = explain([finding("slow-start", "TS107", "info"), finding("divergence", "TS102", "error")], cat)
    assert "(explained by divergence)" in out[0].message


def test_ordering_severity_then_causes_before_symptoms():
    cat = load_catalogue()
    fs = [finding("overfitting", "TS103", "warning"), finding("slow-start", "TS107", "info"),
          finding("divergence", "TS102", "error"), finding("adam-l2-weight-decay", "TS699", "warning")]
    assert [f.name for f in sort_findings(fs, cat)] == ["divergence", "adam-l2-weight-decay", "overfitting", "slow-start"]


def test_real_diverging_run_reports_divergence_first_and_demotes_symptoms(tmp_path):
    run = train(tmp_path / "r", mlp(), teacher_task(n=2048), epochs=3, optimizer="sgd", lr=20.0)
    report = diagnose_report(run)
    assert not report.crashed, report.crashed
    first = report.findings[0]
    assert first.severity is Severity.ERROR  # the root cause carries the divergence's urgency
    div = next(f for f in report.findings if f.name == "divergence")
    assert div.severity is Severity.ERROR or "explained by" in div.message
    for f in report.findings:
        if f.name in {"underfitting", "slow-start", "oscillation"}:
            assert f.severity is Severity.INFO and "explained by" in f.message


def test_missing_run_is_a_trainscope_error(tmp_path):
    with pytest.raises(TrainscopeError):
        diagnose(tmp_path / "nope")
