"""training/batched.py: one batched forward gives what one big forward gives, whatever the output's shape."""

from __future__ import annotations

import pytest
import torch

from training.batched import batched, model_device, unit_float


def test_batches_give_what_one_forward_gives_for_nested_outputs() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.rand(23, 3, 2, 2)

    def fn(xb: torch.Tensor):
        z = net(xb)
        return z, {"pred": z.argmax(1)}, [xb.mean((1, 2, 3)), xb.flatten(1)]

    whole = fn(x)
    got = batched(fn, x, batch_size=5)
    torch.testing.assert_close(got[0], whole[0].detach())
    assert torch.equal(got[1]["pred"], whole[1]["pred"])
    torch.testing.assert_close(got[2][1], whole[2][1])
    assert not got[0].requires_grad and got[0].device.type == "cpu"


def test_uint8_images_become_unit_floats_and_empty_input_keeps_shapes() -> None:
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    assert unit_float(x).tolist() == [[[[0.0, 1.0]]]]
    out = batched(lambda xb: xb.flatten(1) * 2, x, batch_size=1)
    assert out.dtype == torch.float32 and out.tolist() == [[0.0, 2.0]]
    empty = batched(lambda xb: xb.flatten(1), torch.zeros(0, 1, 2, 2), batch_size=4)
    assert empty.shape == (0, 4)


def test_grad_only_when_asked_and_bad_batch_size() -> None:
    net = torch.nn.Linear(4, 1)
    x = torch.rand(6, 4)

    def input_grad(xb: torch.Tensor) -> torch.Tensor:
        xg = xb.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(net(xg).sum(), xg)
        return g

    torch.testing.assert_close(batched(input_grad, x, 4, grad=True), net.weight.detach().expand(6, 4))
    with pytest.raises(RuntimeError):
        batched(input_grad, x, 4)  # under no_grad there is no graph to differentiate
    with pytest.raises(ValueError, match="batch_size"):
        batched(net, x, 0)
    assert model_device(net) == torch.device("cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_run_on_the_models_device() -> None:
    net = torch.nn.Linear(4, 2).cuda()
    x = torch.rand(9, 4)
    out = batched(lambda xb: net(xb), x, 4, model_device(net))
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, net.cpu()(x).detach())
    net.cuda()
    assert batched(lambda xb: net(xb), x, 4, model_device(net), to_cpu=False).device.type == "cuda"
