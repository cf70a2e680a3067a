"""docs/playbook.md: every rule's reference links to a section that exists; the HTML report links there."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainscope.playbook import TOP, anchors, playbook_url, section_anchor
from trainscope.rules.catalogue import load_catalogue

ROOT = Path(__file__).resolve().parents[1]
PLAYBOOK = (ROOT / "docs" / "playbook.md").read_text(encoding="utf-8")
ANCHORS = anchors(PLAYBOOK)

# The rules that existed when the playbook was written must each land on their own section, not the top.
KNOWN = {"adam-l2-weight-decay", "batchnorm-small-batch", "collapsed-activations", "dead-relu", "divergence",
         "dropout-before-batchnorm", "eval-mode-during-training", "exploding-gradients", "initial-loss-mismatch",
         "loss-not-decreasing", "lr-too-high", "lr-too-low", "missing-zero-grad", "nan-or-inf",
         "no-early-stopping", "no-validation", "oscillation", "output-activation-mismatch", "overfitting",
         "poor-initialization", "saturated-activations", "scheduler-step-cadence", "slow-start",
         "softmax-before-cross-entropy", "underfitting", "unnormalized-inputs", "unstable-gradients",
         "vanishing-gradients", "input-pipeline-bound", "host-sync-bound", "performance-hints",
         "dropout-after-output", "high-dropout-rate", "no-normalization-deep-stack"}


@pytest.mark.parametrize("rule", list(load_catalogue(ROOT / "rules").values()), ids=lambda r: r.name)
def test_every_rule_reference_links_to_an_existing_section(rule):
    anchor = section_anchor(rule.reference)
    assert anchor in ANCHORS, (rule.name, rule.reference, anchor)
    if rule.name in KNOWN:
        assert anchor != TOP, (rule.name, rule.reference)
    assert f"`{rule.name}`" in PLAYBOOK or rule.name not in KNOWN, f"{rule.name} is not named in the playbook"


def test_examples_of_the_mapping():
    assert section_anchor("7.8.1 Pattern 3") == "pattern-3"
    assert section_anchor("Document classifier case study (bug 4); prior-art TrainCheck") == "docclf-bug-4"
    assert section_anchor("004 Common mistake 5 (BatchNorm after Dropout)") == "common-mistakes"
    assert section_anchor("something else entirely") == TOP
    assert playbook_url("7.4.4 Early Stopping").endswith("playbook.md#early-stopping")


def test_rules_md_links_resolve_and_the_three_corrections_are_written_down():
    rules_md = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    links = re.findall(r"\(playbook\.md#([\w-]+)\)", rules_md)
    assert len(links) >= len(KNOWN) and set(links) <= ANCHORS
    corrections = PLAYBOOK.split('<a id="corrections"></a>')[1]
    assert "1/6" in corrections and "clone" in corrections and "torch.amp.autocast" in corrections
    for anchor in re.findall(r"\]\(#([\w-]+)\)", PLAYBOOK):  # internal links of the page itself
        assert anchor in ANCHORS, anchor


def test_html_report_links_each_reference_to_the_playbook(tmp_path):
    import trainscope
    from trainscope.report import write_report

    run = trainscope.load_run(ROOT / "sample_runs" / "streamrec-baseline")
    findings = trainscope.diagnose(run)
    path = write_report(run, findings, tmp_path / "r.html")
    html = path.read_text(encoding="utf-8")
    hrefs = re.findall(r'class="ref" href="([^"]+)"', html)
    assert hrefs and all("playbook.md#" in h for h in hrefs)
    assert any(h.endswith("#pattern-3") for h in hrefs)  # overfitting
