"""ForwardTrace + ActivationHooks: order and nonlinearity from the first forward; activation hooks
exist only during recorded forwards."""
from __future__ import annotations

import json

import torch
from torch import nn

import trainscope


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x):
        return torch.sigmoid(self.b(torch.relu(self.a(x))))


def test_first_forward_trace_and_hooks_removed(tmp_path):
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = trainscope.watch(model, tmp_path / "r", optimizer=opt, every=100)
    for step in range(4):
        opt.zero_grad()
        model(torch.randn(7, 3)).sum().backward()
        opt.step()
        if step == 2:
            assert not model.a._forward_hooks and not model.a._forward_pre_hooks  # disarmed after the forward
    assert probe.activations.handles == [] and probe._post_handle is None
    probe.close()
    assert not model._forward_pre_hooks  # close removes everything
    run = trainscope.load_run(tmp_path / "r")
    init = run.init.set_index("layer")
    assert init.loc["a", "nonlinearity"] == "relu" and init.loc["b", "nonlinearity"] == "sigmoid"
    out = json.loads(run.events_of("model_output").iloc[0]["detail"])
    assert out["producer"] == "SigmoidBackward0" and out["last_function"] == "sigmoid" and out["shape"] == [7, 2]
    acts = run.layers[run.layers.kind == "activation"]
    assert sorted(acts.step.unique()) == [0, 1, 2]  # step 3 is not recorded at every=100
    assert run.layers.drop_duplicates("layer").set_index("layer")["order"].to_dict() == {"a": 0, "b": 1}
