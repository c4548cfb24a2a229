import torch
from torch.utils.flop_counter import FlopCounterMode

from pbp.model import ProteinBERT
from pbp.model.flops import forward_flops, train_flops
from pbp.model.pretraining import pretraining_loss
from pbp.model.tokenizer import END_ID, START_ID


def _inputs(cfg, batch, length):
    tokens = torch.randint(0, 22, (batch, length))
    tokens[:, 0], tokens[:, -1] = START_ID, END_ID
    return tokens, (torch.rand(batch, cfg.n_annotations) < 0.1).float()


def test_analytic_count_equals_pytorch_flop_counter(tiny_cfg):
    """The FLOPs used for 'fraction of peak' are exactly what PyTorch's own counter sees (fwd and fwd+bwd)."""
    model = ProteinBERT(tiny_cfg)
    batch, length = 3, 40
    tokens, ann = _inputs(tiny_cfg, batch, length)
    with FlopCounterMode(display=False) as fwd_counter:
        model(tokens, ann)
    assert fwd_counter.get_total_flops() == batch * sum(forward_flops(tiny_cfg, length).values())
    with FlopCounterMode(display=False) as train_counter:
        pretraining_loss(model(tokens, ann), tokens, ann).total.backward()
    assert train_counter.get_total_flops() == batch * train_flops(tiny_cfg, length)
