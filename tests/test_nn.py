"""LoRALinear and add_lora (SPEC §6)."""

import pytest
import torch
from torch import nn

from lowrank_prox.nn import LoRALinear, add_lora


def test_forward_is_base_plus_adapter():
    torch.manual_seed(0)
    layer = LoRALinear(5, 7, 2)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 4, 5)
    W = layer.weight + layer.lora_B @ layer.lora_A
    torch.testing.assert_close(layer(x), x @ W.T + layer.bias, rtol=1e-5, atol=1e-6)
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert layer.lora_A.shape == (2, 5) and layer.lora_B.shape == (7, 2)


def test_from_linear_keeps_output_and_dtype():
    torch.manual_seed(1)
    lin = nn.Linear(6, 4, dtype=torch.float64)
    layer = LoRALinear.from_linear(lin, 3)
    x = torch.randn(10, 6, dtype=torch.float64)
    assert layer.weight.dtype == torch.float64
    torch.testing.assert_close(layer(x), lin(x))  # B = 0 at init
    lin.weight.data.zero_()  # a copy, not a view
    assert float(layer.weight.abs().sum()) > 0


def test_svd_init_is_top_r_of_base():
    torch.manual_seed(2)
    layer = LoRALinear(8, 6, 3, init="svd", dtype=torch.float64)
    U, s, Vh = torch.linalg.svd(layer.weight)
    top = (U[:, :3] * s[:3]) @ Vh[:3]
    torch.testing.assert_close(layer.delta_weight(), top)


def test_add_lora_swaps_named_linears():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 2)))
    x = torch.randn(5, 4)
    before = model(x)
    add_lora(model, 2, ["0", "2.0"])
    assert isinstance(model[0], LoRALinear) and isinstance(model[2][0], LoRALinear)
    torch.testing.assert_close(model(x), before)
    with pytest.raises(ValueError, match="target_modules"):
        add_lora(model, 2, ["nope"])
    with pytest.raises(ValueError, match="only torch.nn.Linear"):
        add_lora(model, 2, ["1"])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"rank": 0}, "rank"), ({"rank": 6}, "rank"), ({"init": "x"}, "init")],
)
def test_bad_arguments(kwargs, match):
    args = {"in_features": 5, "out_features": 7, "rank": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        LoRALinear(args.pop("in_features"), args.pop("out_features"), args.pop("rank"), **args)
