"""``pbp attention``: the attention matrix against the model's own softmax, the figure, the diff and the CLI."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pbp.cli import predict_cmds
from pbp.finetune.export import TaskInfo, save_finetuned
from pbp.model import ModelConfig, ProteinBERT
from pbp.model.finetune import FinetuneModel, TaskKind
from pbp.model.tokenizer import encode
from pbp.predict.attention import (
    DIFF_TITLE,
    attention_figure,
    attention_matrix,
    model_attention,
    save_attention_figure,
)

SEQ = "MKTAYIAKQRQISFVKSHFSRQ"
CFG = ModelConfig(n_annotations=8, d_local=16, d_global=32, n_blocks=2, n_heads=2, d_key=8)


def _random_model(seed: int) -> ProteinBERT:
    """Keras init leaves every bias at 0, so with zero annotations block 1's query is tanh(0) = 0 and its attention
    uniform; noise on every parameter makes each head's attention its own."""
    torch.manual_seed(seed)
    model = ProteinBERT(CFG)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def pretrained(tmp_path) -> Path:
    return _random_model(1).save_pretrained(tmp_path / "pretrained", metadata={"source": "test"})


@pytest.fixture
def finetuned(tmp_path, pretrained) -> Path:
    model = FinetuneModel(_random_model(2), TaskInfo(TaskKind.NUMERIC).spec)
    return save_finetuned(model, TaskInfo(TaskKind.NUMERIC), tmp_path / "finetuned", {"init": str(pretrained)})


def _softmax_by_hand(model: ProteinBERT, seq: str) -> np.ndarray:
    """(blocks * heads, L) from each block's inputs and the paper's formula softmax(tanh(g Wq) tanh(l Wk)^T / sqrt(K)),
    independent of GlobalAttention.forward."""
    out = model(torch.tensor([encode(seq)]), output_hidden_states=True)
    rows = []
    for b, block in enumerate(model.blocks):
        global_G, local_LD = out.global_hidden[2 * b][0], out.local_hidden[2 * b + 1][0]  # block b's attention inputs
        att = block.attention
        for h in range(CFG.n_heads):
            q_K, k_LK = torch.tanh(global_G @ att.Wq[h]), torch.tanh(local_LD @ att.Wk[h])
            rows.append(torch.softmax(k_LK @ q_K / math.sqrt(CFG.d_key), dim=0))
    return torch.stack(rows).detach().double().numpy()


def test_matrix_shape_and_each_head_is_the_models_softmax(pretrained):
    model = ProteinBERT.from_pretrained(pretrained).eval()
    amap = attention_matrix(model, SEQ.lower())  # normalised like every input
    assert amap.residues == SEQ
    assert amap.shape == (CFG.n_blocks * CFG.n_heads, len(SEQ))
    assert amap.start_end_RS.shape == (CFG.n_blocks * CFG.n_heads, 2)
    np.testing.assert_allclose(amap.weights_RN.sum(1) + amap.start_end_RS.sum(1), 1.0, atol=1e-6)
    expected_RL = _softmax_by_hand(model, SEQ)
    np.testing.assert_allclose(amap.weights_RN, expected_RL[:, 1:-1], atol=1e-6)
    np.testing.assert_allclose(amap.start_end_RS, expected_RL[:, [0, -1]], atol=1e-6)
    assert amap.weights_RN.std(axis=1).min() > 1e-4  # no head is uniform: the comparison means something
    np.testing.assert_array_equal(amap.block(1), amap.weights_RN[CFG.n_heads :])


def test_figure_is_a_png_with_one_panel_per_block(tmp_path, pretrained):
    amap = attention_matrix(ProteinBERT.from_pretrained(pretrained), SEQ)
    fig = attention_figure(amap)
    assert [ax.get_ylabel() for ax in fig.axes[: CFG.n_blocks]] == ["block 1", "block 2"]
    assert [t.get_text() for t in fig.axes[CFG.n_blocks - 1].get_xticklabels()] == list(SEQ)
    assert len(fig.axes) == CFG.n_blocks + 1  # + the colorbar
    for name, seq in (("short.png", SEQ), ("long/dir/long.png", "ACDEFGHIKLMNPQRSTVWY" * 6)):  # letters / positions
        path = save_attention_figure(attention_matrix(ProteinBERT.from_pretrained(pretrained), seq), tmp_path / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
        with Image.open(path) as img:
            img.verify()
            assert img.format == "PNG" and img.size[0] > 500 and img.size[1] > 200


def test_diff_of_a_model_with_itself_is_zero(pretrained):
    amap, parent = model_attention(str(pretrained), SEQ, parent=str(pretrained))
    assert amap.diff and parent == str(pretrained)
    assert amap.shape == (CFG.n_blocks * CFG.n_heads, len(SEQ))
    assert not amap.weights_RN.any() and not amap.start_end_RS.any()
    fig = attention_figure(amap)  # an all-zero difference still draws
    assert fig.get_suptitle() == DIFF_TITLE


def test_auto_parent_is_the_finetuned_models_init(finetuned, pretrained):
    amap, parent = model_attention(str(finetuned), SEQ, parent="auto")
    assert parent == str(pretrained)
    ft = attention_matrix(_random_model(2), SEQ)
    pre = attention_matrix(ProteinBERT.from_pretrained(pretrained), SEQ)
    np.testing.assert_allclose(amap.weights_RN, ft.weights_RN - pre.weights_RN, atol=1e-6)
    assert np.abs(amap.weights_RN).max() > 1e-3
    np.testing.assert_allclose(amap.weights_RN.sum(1) + amap.start_end_RS.sum(1), 0.0, atol=1e-6)
    lo, hi = attention_figure(amap).axes[0].images[0].get_clim()
    assert lo == -hi < 0  # diverging scale centred at 0


def test_auto_parent_errors_name_the_model(tmp_path, pretrained):
    with pytest.raises(ValueError, match=r"'.*pretrained' is not a fine-tuned model"):
        model_attention(str(pretrained), SEQ, parent="auto")
    scratch = save_finetuned(
        FinetuneModel(_random_model(3), TaskInfo(TaskKind.BINARY).spec),
        TaskInfo(TaskKind.BINARY),
        tmp_path / "scratch",
        {"init": "none"},
    )
    with pytest.raises(ValueError, match=r"'.*scratch' was fine-tuned from scratch"):
        model_attention(str(scratch), SEQ, parent="auto")


def test_bad_sequence_errors_naming_it(pretrained):
    model = ProteinBERT.from_pretrained(pretrained)
    with pytest.raises(ValueError, match=r"'MKTJW'.*'J' at residue 4"):
        attention_matrix(model, "MKTJW")
    with pytest.raises(ValueError, match="empty sequence"):
        model_attention(str(pretrained), "  ")


def _cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pbp")
    predict_cmds.register_attention(parser.add_subparsers(dest="command"))
    return parser.parse_args(["attention", *argv])


def test_cli_draws_the_difference_and_prints_where(tmp_path, finetuned, pretrained, capsys):
    out = tmp_path / "fig.png"
    args = _cli("--model", str(finetuned), "--sequence", SEQ, "--out", str(out), "--parent", "auto")
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert f"{finetuned} minus {pretrained}" in printed and str(out) in printed
    assert f"4 rows (2 blocks x 2 heads) x {len(SEQ)} residues" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = _cli("--model", str(finetuned), "--sequence", "MKB", "--out", str(out))
    with pytest.raises(ValueError, match="'MKB'"):
        bad.func(bad)
    odd = _cli("--model", str(tmp_path / "no-such-model"), "--sequence", SEQ, "--out", str(tmp_path / "fig.xyz"))
    with pytest.raises(ValueError, match=r"--out .*fig\.xyz: the figure's format follows its extension, and '\.xyz'"):
        odd.func(odd)  # before the model is even looked for
    assert not (tmp_path / "fig.xyz").exists()
