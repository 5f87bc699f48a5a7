"""NMSW's joint training pass works under DistributedDataParallel (gloo, one CPU process)."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from networks.test_nmsw import NUM_CLASSES, image, make_nmsw
from torch.nn.parallel import DistributedDataParallel

from nnunet_efficient.networks.nmsw_training import draw_training_randomness, nmsw_loss


def cross_entropy(logits, target):
    return F.cross_entropy(logits, target[:, 0].long())


@pytest.fixture
def process_group():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_forward_with_train_arguments_is_the_training_pass():
    net = make_nmsw()
    x = image((32, 32, 32))
    target = torch.randint(0, NUM_CLASSES, (1, 1, 32, 32, 32), generator=torch.Generator().manual_seed(0))
    noise, starts = draw_training_randomness(net, target, torch.Generator().manual_seed(1))
    direct = net.forward_train(x, noise=noise, random_window_start=starts)
    routed = net(x, train={"noise": noise, "random_window_start": starts})
    torch.testing.assert_close(routed["logits"], direct["logits"])
    assert net(x[..., :16, :16, :16]).shape == (1, NUM_CLASSES, 16, 16, 16)  # plain call: local net


def test_training_steps_under_ddp_reach_every_parameter(process_group):
    net = make_nmsw()
    ddp = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, NUM_CLASSES, (1, 1, 32, 32, 32), generator=generator)
    # DDP raises on the second step if the first left a trainable parameter without gradient
    frozen = [name for name, p in net.named_parameters() if not p.requires_grad]
    assert frozen and all(".seg_layers." in name for name in frozen)
    for step in range(2):
        noise, starts = draw_training_randomness(net, target, generator)
        out = ddp(image((32, 32, 32), seed=step), train={"noise": noise, "random_window_start": starts})
        loss, _ = nmsw_loss(out, target, cross_entropy)
        optimizer.zero_grad()
        loss.backward()
        missing = [name for name, p in net.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, missing
        optimizer.step()
