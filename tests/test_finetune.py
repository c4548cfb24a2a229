import pytest
import torch

from pbp.model import ModelConfig, ProteinBERT
from pbp.model.finetune import (
    IGNORE_INDEX,
    FinetuneModel,
    TaskKind,
    TaskSpec,
    extract_features,
    residue_labels_to_positions,
)
from pbp.model.tokenizer import encode, pad


def test_feature_sizes_of_the_paper_model():
    model = ProteinBERT(ModelConfig()).eval()
    tokens = pad([encode("MKTAYIAKQR"), encode("MKV")], 12)
    with torch.no_grad():
        local, glob = extract_features(model, tokens)
    assert local.shape == (2, 12, 1562)
    assert glob.shape == (2, 15599)
    # The last features are probabilities: token softmax sums to 1, annotation sigmoids lie in (0, 1).
    torch.testing.assert_close(local[..., -26:].sum(-1), torch.ones(2, 12))
    assert ((glob[:, -8943:] > 0) & (glob[:, -8943:] < 1)).all()


@pytest.mark.parametrize(
    ("kind", "n_classes", "shape"),
    [
        ("numeric", 1, (2,)),
        ("binary", 1, (2,)),
        ("categorical", 5, (2, 5)),
        ("residue_binary", 1, (2, 12)),
        ("residue_categorical", 3, (2, 12, 3)),
    ],
)
def test_head_output_shapes_and_losses(tiny_cfg, kind, n_classes, shape):
    model = FinetuneModel(ProteinBERT(tiny_cfg), TaskSpec(kind, n_classes))
    tokens = pad([encode("MKTAYIAKQR"), encode("MKV")], 12)
    logits = model(tokens)
    assert logits.shape == shape
    task = model.task
    if task.kind.per_residue:
        labels = (
            residue_labels_to_positions([[1] * 10, [0, 1, 0]], 12)
            if n_classes == 1
            else (residue_labels_to_positions([[2] * 10, [0, 1, 2]], 12))
        )
    elif task.kind is TaskKind.CATEGORICAL:
        labels = torch.tensor([4, 0])
    else:
        labels = torch.tensor([1.0, 0.0])
    loss = model.loss(logits, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.head.weight.grad is not None


def test_residue_labels_align_with_residues_and_ignore_specials():
    labels = residue_labels_to_positions([[0, 1, 2], [1]], 6)
    assert labels.tolist() == [
        [IGNORE_INDEX, 0, 1, 2, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX, 1] + [IGNORE_INDEX] * 4,
    ]
    with pytest.raises(ValueError, match="row 0"):
        residue_labels_to_positions([[0] * 5], 6)


def test_residue_loss_ignores_start_end_and_pad(tiny_cfg):
    model = FinetuneModel(ProteinBERT(tiny_cfg), TaskSpec("residue_categorical", 3)).eval()
    tokens = pad([encode("MKV")], 8)
    labels = residue_labels_to_positions([[0, 1, 2]], 8)
    logits = model(tokens).detach()
    base = model.loss(logits, labels)
    logits[0, 0] = 100.0  # <START>
    logits[0, 4:] = -100.0  # <END> and <PAD>
    torch.testing.assert_close(model.loss(logits, labels), base)


def test_freeze_and_unfreeze_body(tiny_cfg):
    model = FinetuneModel(ProteinBERT(tiny_cfg), TaskSpec("binary"))
    model.freeze_body()
    assert model.body_frozen
    tokens = pad([encode("MKTAYIAKQR")], 12)
    model.loss(model(tokens), torch.tensor([1.0])).backward()
    assert all(p.grad is None for p in model.body.parameters())
    assert model.head.weight.grad is not None
    model.unfreeze_body()
    assert not model.body_frozen
    model.loss(model(tokens), torch.tensor([1.0])).backward()
    assert model.body.embedding.weight.grad is not None


def test_categorical_needs_classes():
    with pytest.raises(ValueError, match="n_classes >= 2"):
        TaskSpec("categorical", 1)
