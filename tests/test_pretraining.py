import torch

from pbp.model import ProteinBERT
from pbp.model.pretraining import CorruptionConfig, PretrainingLossConfig, corrupt, pretraining_loss
from pbp.model.tokenizer import PAD_ID, VOCAB_SIZE


def _batch(n=256, length=200, n_ann=400, p_ann=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 22, (n, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
    tokens[torch.arange(length)[None, :] >= lengths[:, None]] = PAD_ID
    ann = (torch.rand(n, n_ann, generator=g) < p_ann).float()
    return tokens, ann


def test_token_noise_rate_and_uniform_replacement():
    tokens, ann = _batch()
    cfg = CorruptionConfig(p_no_annotation_input=0.0)
    out = corrupt(tokens, ann, cfg, torch.Generator().manual_seed(1))
    real = tokens != PAD_ID
    changed = (out.tokens != tokens) & real
    # A replacement equals the original 1/26 of the time, so the visible change rate is 0.05 * 25/26.
    rate = changed.sum().item() / real.sum().item()
    assert abs(rate - 0.05 * 25 / 26) < 0.003
    # Replacements are uniform over all 26 tokens, specials included.
    counts = torch.bincount(out.tokens[changed], minlength=VOCAB_SIZE).float()
    assert (counts > 0).all()
    assert counts.std() / counts.mean() < 0.15
    assert (out.tokens[~real] == PAD_ID).all()  # padding untouched by default
    assert torch.equal(out.pad_mask, real)


def test_padding_corruption_can_be_switched_on_like_the_original():
    tokens, ann = _batch()
    out = corrupt(tokens, ann, CorruptionConfig(corrupt_padding=True), torch.Generator().manual_seed(1))
    assert (out.tokens[tokens == PAD_ID] != PAD_ID).any()


def test_annotation_noise_rates():
    tokens, ann = _batch(n=2000, n_ann=500)
    cfg = CorruptionConfig(p_no_annotation_input=0.0, p_annotation_add=0.01)
    out = corrupt(tokens, ann, cfg, torch.Generator().manual_seed(2))
    present = ann.bool()
    kept = (out.annotations.bool() & present).sum().item() / present.sum().item()
    added = (out.annotations.bool() & ~present).sum().item() / (~present).sum().item()
    assert abs(kept - 0.75) < 0.01
    assert abs(added - 0.01) < 0.001


def test_added_annotations_fall_only_on_absent_terms_uniformly_at_the_rate_whatever_its_size():
    """Adds are drawn sparsely (a binomial count placed among absent terms): same distribution as a draw per term."""
    tokens, ann = _batch(n=1000, n_ann=300, p_ann=0.05)
    present = ann.bool()
    for p_add, seed in ((0.004, 4), (0.9, 5)):  # the sparse draw, and the dense regime near 1
        cfg = CorruptionConfig(p_no_annotation_input=0.0, p_annotation_drop=1.0, p_annotation_add=p_add)
        out = corrupt(tokens, ann, cfg, torch.Generator().manual_seed(seed)).annotations.bool()
        assert not (out & present).any()  # every present one dropped; nothing added on top of them
        n_absent = (~present).sum().item()
        sd = (n_absent * p_add * (1 - p_add)) ** 0.5
        assert abs(out.sum().item() - n_absent * p_add) < 4 * sd
        per_term = out.sum(0).float() / (~present).sum(0).float()  # uniform over terms and over samples
        per_sample = out.sum(1).float() / (~present).sum(1).float()
        assert (per_term.std() / per_term.mean()) < 4 * ((1 - p_add) / (p_add * 1000)) ** 0.5
        assert (per_sample.std() / per_sample.mean()) < 4 * ((1 - p_add) / (p_add * 300)) ** 0.5


def test_absent_annotations_are_chosen_among_the_absent_only():
    import numpy as np

    from pbp.model.pretraining import _choose_outside

    rng = np.random.default_rng(0)
    for excluded in ([], [0], [2, 3, 9], list(range(0, 40, 3)), [39]):
        got = _choose_outside(rng, 40, np.array(excluded, dtype=np.int64), 1.0)
        assert sorted(got.tolist()) == [i for i in range(40) if i not in excluded]


def test_half_the_samples_lose_all_annotation_input():
    tokens, ann = _batch(n=4000, n_ann=50, p_ann=0.5)
    out = corrupt(tokens, ann, CorruptionConfig(), torch.Generator().manual_seed(3))
    empty = (out.annotations.sum(1) == 0).float().mean().item()
    assert abs(empty - 0.5) < 0.03
    assert torch.equal(ann, _batch(n=4000, n_ann=50, p_ann=0.5)[1])  # inputs not modified


def test_corruption_is_reproducible_with_a_seeded_generator():
    tokens, ann = _batch()
    a = corrupt(tokens, ann, CorruptionConfig(), torch.Generator().manual_seed(7))
    b = corrupt(tokens, ann, CorruptionConfig(), torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.annotations, b.annotations)


def test_pad_positions_and_unannotated_proteins_contribute_nothing(tiny_cfg):
    model = ProteinBERT(tiny_cfg)
    tokens, ann = _batch(n=4, length=30, n_ann=tiny_cfg.n_annotations, p_ann=0.2)
    ann[2] = 0  # an unannotated protein
    out = model(tokens, ann)
    base = pretraining_loss(out, tokens, ann)
    # Change the logits at pad positions and of the unannotated protein: the loss must not move.
    out.token_logits = out.token_logits.detach().clone()
    out.annotation_logits = out.annotation_logits.detach().clone()
    out.token_logits[tokens == PAD_ID] = torch.randn_like(out.token_logits[tokens == PAD_ID]) * 100
    out.annotation_logits[2] = 1e4
    moved = pretraining_loss(out, tokens, ann)
    torch.testing.assert_close(moved.token_loss, base.token_loss.detach())
    torch.testing.assert_close(moved.annotation_loss, base.annotation_loss.detach())
    assert moved.n_tokens.item() == (tokens != PAD_ID).sum().item()
    assert moved.n_annotated.item() == 3


def test_loss_parts_and_weighting(tiny_cfg):
    model = ProteinBERT(tiny_cfg)
    tokens, ann = _batch(n=4, length=30, n_ann=tiny_cfg.n_annotations, p_ann=0.2)
    out = model(tokens, ann)
    loss = pretraining_loss(out, tokens, ann, PretrainingLossConfig(annotation_loss_weight=0.5))
    torch.testing.assert_close(loss.total, loss.token_loss + 0.5 * loss.annotation_loss)
    assert loss.token_loss.item() > 0 and loss.annotation_loss.item() > 0


def test_no_annotated_protein_gives_zero_annotation_loss(tiny_cfg):
    model = ProteinBERT(tiny_cfg)
    tokens, ann = _batch(n=2, length=20, n_ann=tiny_cfg.n_annotations, p_ann=0.0)
    loss = pretraining_loss(model(tokens, ann), tokens, ann)
    assert loss.annotation_loss.item() == 0.0 and torch.isfinite(loss.total)


def test_tiny_model_overfits_one_fixed_batch(tiny_cfg):
    """The objective and model can learn: loss on one fixed corrupted batch falls by at least half."""
    model = ProteinBERT(tiny_cfg)
    tokens, ann = _batch(n=8, length=64, n_ann=tiny_cfg.n_annotations, p_ann=0.1)
    batch = corrupt(tokens, ann, CorruptionConfig(), torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = pretraining_loss(model(batch.tokens, batch.annotations, pad_mask=batch.pad_mask), tokens, ann)
        loss.total.backward()
        opt.step()
        losses.append(loss.total.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
