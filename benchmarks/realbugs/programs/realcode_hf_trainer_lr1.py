"""transformers.Trainer on a tiny GPT-2 (CPU) at learning_rate=1.0 with a plain trainscope.watch(model);
the control runs at 5e-4."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _realcode_hf as hf  # noqa: E402

CASE = {
    "id": "realcode_hf_trainer_lr1",
    "source": "https://huggingface.co/docs/transformers/main_classes/trainer — Trainer + TrainingArguments, tiny "
              "GPT2Config",
    "summary": "GPT2LMHeadModel from GPT2Config(n_layer=2, n_embd=64) trained by transformers.Trainer "
               "(warmup_steps=8 of ~80, max_grad_norm=1.0, logging_steps=10, eval each epoch) at learning_rate=1.0, "
               "recorded by trainscope.watch(model) alone: no optimizer, criterion or callback handed over, "
               "no probe.log calls; the loss blows up within the warmup.",
    "labels": ["lr-too-high"],
    "also_ok": ["divergence", "oscillation", "loss-not-decreasing", "underfitting", "unstable-gradients",
                "exploding-gradients", "collapsed-activations", "nan-or-inf", "overfitting", "no-validation"],
    "fix": "learning_rate=5e-4 (the healthy control)",
}


def run(run_dir: str, fixed: bool) -> None:
    hf.train_trainer(run_dir, learning_rate=5e-4 if fixed else 1.0)
