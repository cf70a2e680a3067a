"""A Hugging Face-style hand-written causal-LM loop (tiny GPT-2, CPU) at lr=1.0; the control runs at 5e-4."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _realcode_hf as hf  # noqa: E402

CASE = {
    "id": "realcode_hf_loop_lr1",
    "source": "https://github.com/huggingface/transformers/blob/main/examples/pytorch/language-modeling/"
              "run_clm_no_trainer.py — the documented native-PyTorch causal-LM loop (also "
              "huggingface.co/docs/transformers/training), tiny GPT2Config",
    "summary": "GPT2LMHeadModel from GPT2Config(n_layer=2, n_embd=64) trained with the documented loop "
               "(AdamW with no_decay groups, get_linear_schedule_with_warmup over 10% of the steps, "
               "loss = outputs.loss, clip_grad_norm_(1.0)) at learning_rate=1.0: the loss blows up during "
               "warmup while clipping keeps post-clip gradient norms at 1.",
    "labels": ["lr-too-high"],
    "also_ok": ["divergence", "oscillation", "loss-not-decreasing", "underfitting", "unstable-gradients",
                "exploding-gradients", "collapsed-activations", "nan-or-inf", "overfitting"],
    "fix": "learning_rate=5e-4, a usual rate for a small GPT-2 trained from scratch (the healthy control)",
}


def run(run_dir: str, fixed: bool) -> None:
    hf.train_loop(run_dir, learning_rate=5e-4 if fixed else 1.0)
