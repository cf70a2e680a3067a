"""AUTOTRAINER (ICSE'21) demo case 'Improper_Activation': a 3-class classifier whose output layer is a ReLU."""
import torch
from sklearn.datasets import make_blobs
from torch import nn

import trainscope

CASE = {
    "id": "autotrainer_improper_activation_relu_output",
    "source": "https://github.com/shiningrain/AUTOTRAINER/blob/master/AutoTrainer/demo_case/Improper_Activation_case/"
              "demo_activation.py — AUTOTRAINER demo case Improper_Activation",
    "summary": "Four Dense(50, relu, he_uniform) layers on 2-D 3-class blobs, then Dense(3, activation='relu') "
               "as the output ('# model.add(Softmax())' commented out), categorical cross-entropy, "
               "Adam(lr=1e-4), batch 256, 300 epochs (150 here). Keras' cross-entropy rescales the outputs "
               "to sum to 1, so ReLU outputs that are 0 give log(1e-7) and units whose pre-activation is "
               "negative get no gradient. Ported from Keras with that loss written out.",
    "labels": ["output-activation-mismatch"],
    "also_ok": ["dead-relu", "loss-not-decreasing", "underfitting", "slow-start", "collapsed-activations",
                "unnormalized-inputs", "initial-loss-mismatch", "nan-or-inf", "divergence"],
    "fix": "a softmax output layer instead of the ReLU (the commented-out model.add(Softmax()); AUTOTRAINER's repair)",
}


def keras_categorical_crossentropy(probs, y):
    """Keras' categorical_crossentropy(from_logits=False): rescale the outputs to sum to 1, clip, -sum(t log p)."""
    probs = probs / probs.sum(dim=1, keepdim=True)
    probs = probs.clamp(1e-7, 1 - 1e-7)
    return -torch.log(probs[torch.arange(len(y)), y]).mean()


def run(run_dir: str, fixed: bool) -> None:
    torch.manual_seed(0)
    # AUTOTRAINER's 'simplednn_blob': 1000 points, 700 for training, no preprocessing
    x, y = make_blobs(n_samples=1000, centers=3, n_features=2, cluster_std=2, random_state=2)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    x_train, y_train, x_val, y_val = x[:700], y[:700], x[700:], y[700:]
    layers = []
    width = 2
    for _ in range(4):
        lin = nn.Linear(width, 50)
        nn.init.kaiming_uniform_(lin.weight, nonlinearity="relu")
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.ReLU()]
        width = 50
    out = nn.Linear(50, 3)
    nn.init.xavier_uniform_(out.weight)  # Keras' default glorot_uniform on the output layer
    nn.init.zeros_(out.bias)
    layers.append(out)
    if not fixed:
        layers.append(nn.ReLU())
    else:
        layers.append(nn.Softmax(dim=1))
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    crit = keras_categorical_crossentropy
    probe = trainscope.watch(model, run_dir, optimizer=opt, criterion=crit)
    g = torch.Generator().manual_seed(0)
    for epoch in range(150):
        model.train()
        perm = torch.randperm(700, generator=g)
        for i in range(0, 700, 256):
            idx = perm[i:i + 256]
            opt.zero_grad()
            loss = crit(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
            probe.log(epoch=epoch, train_loss=loss.detach())
        model.eval()
        with torch.no_grad():
            o = model(x_val)
            probe.log(epoch=epoch, val_loss=crit(o, y_val).item(), val_acc=(o.argmax(1) == y_val).float().mean().item())
    probe.close()
