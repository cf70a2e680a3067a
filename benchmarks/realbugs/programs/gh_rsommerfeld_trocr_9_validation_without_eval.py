"""rsommerfeld/trocr#9: "During training you don't use model.eval() when you call to validate() function. It
could affect to model performance?" The maintainer: "thanks for noticing this! I will push a new commit
shortly" (validation with dropout active gives noisy, pessimistic scores). Tiny scale: an image-to-sequence
recognizer in the TrOCR shape (a conv encoder with dropout over a line image, a GRU decoder with dropout,
teacher forcing in training, greedy decoding for the character error rate in validate()), on "text lines" of
3 sklearn digits side by side (8x24 images, target = the 3 digit tokens). validate() runs under
torch.no_grad(); the fix calls model.eval() in validate() and model.train() before training resumes."""
import torch
from torch import nn

import trainscope
from _data import digits

CASE = {
    "id": "gh_rsommerfeld_trocr_9_validation_without_eval",
    "source": "https://github.com/rsommerfeld/trocr/issues/9 — Model.eval()",
    "summary": "validate() decodes the validation lines under torch.no_grad() but with the model still in train "
               "mode, so dropout in encoder and decoder is active and the validation loss and CER are noisy "
               "and worse than the model's",
    "labels": ["train-mode-during-evaluation"],
    "also_ok": [],
    "fix": "model.eval() at the start of validate(), model.train() when training resumes",
}

BOS, VOCAB = 10, 11


def lines(x, y, n: int, g: torch.Generator):
    idx = torch.randint(0, len(x), (n, 3), generator=g)
    img = torch.cat([x[idx[:, k]].reshape(n, 1, 8, 8) for k in range(3)], dim=3)  # (n, 1, 8, 24)
    return img, y[idx]


class TinyOCR(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Dropout(0.2),
                                     nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.2))
        self.to_h = nn.Linear(32 * 4 * 12, 96)
        self.embed = nn.Embedding(VOCAB, 32)
        self.decoder = nn.GRU(32, 96, batch_first=True)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(96, VOCAB)

    def forward(self, img, tgt_in):
        h = torch.tanh(self.to_h(self.encoder(img).flatten(1))).unsqueeze(0)
        o, _ = self.decoder(self.embed(tgt_in), h)
        return self.out(self.drop(o))


def greedy(model, img):
    tok = torch.full((len(img), 1), BOS, dtype=torch.long)
    for _ in range(3):
        logits = model(img, tok)
        tok = torch.cat([tok, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return tok[:, 1:]


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xtr, ytr, xva, yva = digits()
    img_train, txt_train = lines(xtr, ytr, 1000, g)
    img_val, txt_val = lines(xva, yva, 300, g)
    model = TinyOCR()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = trainscope.watch(model, run_dir, optimizer=optimizer, criterion=criterion)

    def teacher(img, txt):
        tgt_in = torch.cat([torch.full((len(txt), 1), BOS, dtype=torch.long), txt[:, :-1]], 1)
        return criterion(model(img, tgt_in).reshape(-1, VOCAB), txt.reshape(-1))

    def validate():
        if fixed:
            model.eval()
        with torch.no_grad():
            loss = teacher(img_val, txt_val).item()
            cer = (greedy(model, img_val) != txt_val).float().mean().item()
        return loss, cer

    for epoch in range(6):
        model.train()
        perm = torch.randperm(len(img_train), generator=g)
        for i in range(0, len(perm), 32):
            idx = perm[i:i + 32]
            optimizer.zero_grad()
            loss = teacher(img_train[idx], txt_train[idx])
            loss.backward()
            optimizer.step()
            probe.log(epoch=epoch, train_loss=loss.item())
        val_loss, cer = validate()
        probe.log(epoch=epoch, val_loss=val_loss, val_cer=cer)
    probe.close()
