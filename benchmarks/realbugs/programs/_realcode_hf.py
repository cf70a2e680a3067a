"""Hugging Face-style causal-LM training of a tiny GPT-2 built from a GPT2Config (no download), on a character
corpus generated here. Two ways a user trains it, both following the Hugging Face docs:

- `train_loop`: the hand-written loop of the `run_clm_no_trainer.py` example / the course's "full training loop"
  chapter: AdamW with no_decay groups, get_linear_schedule_with_warmup, `outputs.loss`, clip_grad_norm_(1.0);
- `train_trainer`: `transformers.Trainer` with TrainingArguments (warmup, max_grad_norm=1.0, logging_steps=10)
  and a plain `trainscope.watch(model)` (no trainscope callback).
"""
from __future__ import annotations

import random

import torch

import trainscope


def make_corpus(n_chars: int = 16000, seed: int = 7) -> str:
    rng = random.Random(seed)
    subj = ["the cat", "a dog", "my friend", "the old man", "she", "he", "the queen", "a bird"]
    verb = ["sat on", "looked at", "ran to", "sang to", "found", "ate", "saw", "walked past"]
    obj = ["the mat", "a tree", "the river", "her house", "the moon", "a red apple", "the hill", "his hat"]
    out = []
    while sum(len(s) for s in out) < n_chars:
        out.append(f"{rng.choice(subj)} {rng.choice(verb)} {rng.choice(obj)}.\n")
    return "".join(out)[:n_chars]


def datasets(block: int = 32):
    text = make_corpus()
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    n = (len(ids) // block) * block
    blocks = ids[:n].view(-1, block)  # group_texts(): fixed-size blocks, labels = input_ids
    n_train = int(0.9 * len(blocks))
    return len(chars), blocks[:n_train], blocks[n_train:]


def tiny_gpt2(vocab: int, block: int = 32):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(42)
    config = GPT2Config(vocab_size=vocab, n_positions=block, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def train_loop(run_dir: str, learning_rate: float, epochs: int = 3, batch_size: int = 16) -> None:
    from transformers import get_linear_schedule_with_warmup

    vocab, train_blocks, eval_blocks = datasets()
    model = tiny_gpt2(vocab)
    no_decay = ["bias", "ln_1.weight", "ln_2.weight", "ln_f.weight"]
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
    steps_per_epoch = len(train_blocks) // batch_size
    total = epochs * steps_per_epoch
    lr_scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=total // 10, num_training_steps=total)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, scheduler=lr_scheduler)
    g = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train_blocks), generator=g)
        for step in range(steps_per_epoch):
            batch = train_blocks[perm[step * batch_size:(step + 1) * batch_size]]
            outputs = model(input_ids=batch, labels=batch)
            loss = outputs.loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            probe.log(epoch=epoch, train_loss=loss.detach())
        model.eval()
        losses = []
        with torch.no_grad():
            for i in range(0, len(eval_blocks), batch_size):
                b = eval_blocks[i:i + batch_size]
                losses.append(model(input_ids=b, labels=b).loss)
        probe.log(epoch=epoch, val_loss=torch.stack(losses).mean())
    probe.close()


def train_trainer(run_dir: str, learning_rate: float, epochs: int = 3, batch_size: int = 16) -> None:
    import os
    import tempfile

    from transformers import Trainer, TrainingArguments

    os.environ.setdefault("WANDB_DISABLED", "true")
    vocab, train_blocks, eval_blocks = datasets()
    model = tiny_gpt2(vocab)
    train_ds = [{"input_ids": b, "labels": b} for b in train_blocks]
    eval_ds = [{"input_ids": b, "labels": b} for b in eval_blocks]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, learning_rate=learning_rate, num_train_epochs=epochs,
                                 per_device_train_batch_size=batch_size, per_device_eval_batch_size=batch_size,
                                 warmup_steps=8, weight_decay=0.01, max_grad_norm=1.0, logging_steps=10,
                                 eval_strategy="epoch", save_strategy="no", report_to=[], use_cpu=True,
                                 seed=42, dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds)
        probe = trainscope.watch(model, run_dir)
        trainer.train()
        probe.close()
