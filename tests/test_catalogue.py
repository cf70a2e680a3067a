"""The catalogue (rules/*.toml), the detectors, the tests and the docs agree; the wheel ships it."""
from __future__ import annotations

import re
import shutil
import string
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers_training import mlp, teacher_task, train
from trainscope.rules.catalogue import CatalogueError, load_catalogue, parse_rule
from trainscope.rules.engine import diagnose_report
from trainscope.rules.registry import DETECTORS

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
FAMILY_DIGIT = {"loss": "1"}  # the families this file's owner allocates; others must be consistent


@pytest.fixture(scope="module")
def catalogue():
    import trainscope.rules.detectors  # noqa: F401  (registers)

    return load_catalogue()


def test_every_entry_has_a_detector_and_every_detector_an_entry(catalogue):
    from trainscope.rules.detectors import IMPORT_ERRORS

    assert not IMPORT_ERRORS, IMPORT_ERRORS
    assert sorted(set(catalogue) - set(DETECTORS)) == [], "catalogue entries without a detector"
    assert sorted(set(DETECTORS) - set(catalogue)) == [], "detectors without a catalogue entry"


def test_every_rule_is_named_in_some_test(catalogue):
    texts = "\n".join(p.read_text() for p in TESTS.glob("test_*.py") if p.name != Path(__file__).name)
    untested = [n for n in catalogue if not re.search(rf"[\"']{re.escape(n)}[\"']", texts)]
    assert untested == [], f"rules no test mentions: {untested}"


def test_codes_and_families_are_consistent(catalogue):
    digit_of_family: dict[str, set[str]] = {}
    for r in catalogue.values():
        digit_of_family.setdefault(r.family, set()).add(r.code[2])
    assert all(len(d) == 1 for d in digit_of_family.values()), digit_of_family
    for fam, digit in FAMILY_DIGIT.items():
        assert digit_of_family.get(fam) == {digit}


def test_explains_names_known_rules(catalogue):
    bad = {r.name: [x for x in r.explains if x not in catalogue] for r in catalogue.values()}
    assert {k: v for k, v in bad.items() if v} == {}


def test_fix_templates_are_well_formed(catalogue):
    for r in catalogue.values():
        for fix in r.fixes:
            fields = [f for _, f, _, _ in string.Formatter().parse(fix) if f is not None]
            assert all(f.isidentifier() for f in fields), (r.name, fix)


@pytest.fixture(scope="module")
def sample_findings(tmp_path_factory):
    """Findings from a few real runs that trigger many rules: every placeholder must get filled."""
    d = tmp_path_factory.mktemp("runs")
    runs = [
        ROOT / "tests" / "data" / "streamrec_baseline.csv",
        train(d / "diverge", mlp(), teacher_task(n=1024), epochs=2, optimizer="sgd", lr=20.0),
        train(d / "flat", mlp(), teacher_task(n=1024), epochs=2, optimizer="sgd", lr=1e-7),
        train(d / "overfit", mlp(hidden=256, depth=3), teacher_task(n=64, label_noise=0.3), epochs=40, batch_size=16),
        train(d / "noval", mlp(), teacher_task(n=1024), epochs=4, validate=False),
    ]
    return [f for run in runs for f in diagnose_report(run).findings]


def test_fix_placeholders_get_filled(sample_findings):
    assert len({f.name for f in sample_findings}) >= 6
    for f in sample_findings:
        for fix in f.fixes:
            assert not re.search(r"\{[A-Za-z_]\w*\}", fix), (f.name, fix)


def test_docs_rules_md_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_rule_docs.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout


def _copy_catalogue(tmp_path: Path) -> Path:
    d = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", d)
    return d


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda s: s.replace('severity = "warning"', 'severity = "fatal"'), "severity 'fatal'"),
        (lambda s: re.sub(r'^title = .*$', "", s, flags=re.M), "missing field"),
        (lambda s: s.replace('code = "TS103"', 'code = "TS101"'), "also used by"),
        (lambda s: s.replace('code = "TS103"', 'code = "X103"'), "not TS followed by three digits"),
        (lambda s: s.replace('needs = ["scalars", "validation"]', 'needs = ["gpu"]'), "needs"),
        (lambda s: "bogus = 1\n" + s, "unknown field"),
        (lambda s: s.replace("[params.min_evals]\ndefault = 5", "[params.min_evals]\nhelp_only = 5"), "needs a default"),
        (lambda s: re.sub(r'^false_positives = .*$', "", s, flags=re.M), r"\[doc\] is missing field\(s\) false_positives"),
        (lambda s: re.sub(r'^false_positives = .*$', 'false_positives = " "', s, flags=re.M), "false_positives must say"),
        (lambda s: re.sub(r'^false_positives = .*$', "false_positives = 3", s, flags=re.M), r"false_positives must be strings"),
    ],
)
def test_malformed_rule_files_are_clear_errors(tmp_path, edit, match):
    d = _copy_catalogue(tmp_path)
    f = d / "overfitting.toml"
    f.write_text(edit(f.read_text()))
    with pytest.raises(CatalogueError, match=match) as e:
        load_catalogue(d)
    assert "overfitting.toml" in str(e.value) or "also used by" in str(e.value)


def test_rule_file_name_must_match(tmp_path):
    p = tmp_path / "overfit.toml"
    p.write_text((ROOT / "rules" / "overfitting.toml").read_text())
    with pytest.raises(CatalogueError, match="does not match the file name"):
        parse_rule(p)


def test_wheel_ships_the_catalogue(tmp_path, catalogue):
    pytest.importorskip("hatchling")
    out = tmp_path / "dist"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(out.glob("trainscope-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        shipped = {Path(n).stem for n in names if n.startswith("trainscope/_catalogue/") and n.endswith(".toml")}
        assert shipped == set(catalogue)
        z.extractall(tmp_path / "site")
    code = (
        "from trainscope.rules.catalogue import catalogue_dir, load_catalogue; "
        "print(catalogue_dir()); print(len(load_catalogue()))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    where, count = r.stdout.split()
    assert where.startswith(str(tmp_path / "site")) and where.endswith("_catalogue")
    assert int(count) == len(catalogue)


def test_rule_docs_show_known_false_positives(catalogue):
    """Every rule documents when it can fire on a healthy run; docs/rules.md and `trainscope rule` show it."""
    text = (ROOT / "docs" / "rules.md").read_text()
    for r in catalogue.values():
        fp = r.doc["false_positives"].strip()
        section = text.split(f"\n## {r.name}\n", 1)[1].split("\n## ", 1)[0]
        assert "**Known false positives.** " + fp in section, r.name
        assert section.index("**Use instead**") < section.index("**Known false positives.**") < section.index(
            "**Fixes suggested**"), r.name
