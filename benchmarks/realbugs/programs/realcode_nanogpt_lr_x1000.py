"""nanoGPT's training loop (tiny, CPU) at 1000x its learning rate; the control is the same loop at its own rate."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _realcode_nanogpt as nanogpt  # noqa: E402

CASE = {
    "id": "realcode_nanogpt_lr_x1000",
    "source": "https://github.com/karpathy/nanoGPT — train.py + model.py (tiny rewrite; config shakespeare_char)",
    "summary": "nanoGPT's real loop (2-layer GPT with tied embeddings, AdamW with decay/no-decay groups, linear "
               "warmup then cosine set by hand through param_group['lr'], clip_grad_norm_(1.0), bf16 autocast "
               "off on CPU) trained on a generated character corpus at learning_rate = 1.0, 1000x the config's "
               "1e-3. Clipping hides the gradient blow-up from post-clip norms.",
    "labels": ["lr-too-high"],
    "also_ok": ["divergence", "oscillation", "loss-not-decreasing", "underfitting", "unstable-gradients",
                "exploding-gradients", "collapsed-activations", "nan-or-inf"],
    "fix": "learning_rate = 1e-3, the config's value (the healthy control)",
}


def run(run_dir: str, fixed: bool) -> None:
    nanogpt.train(run_dir, learning_rate=1e-3 if fixed else 1.0)
