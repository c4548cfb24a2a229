import pytest
import torch

from pbp.model import ModelConfig, ProteinBERT
from pbp.model.tokenizer import PAD_ID, encode, pad

PAPER_PARAMETERS = 15_981_321


def test_paper_config_has_the_original_parameter_count():
    model = ProteinBERT(ModelConfig())
    assert model.num_parameters() == PAPER_PARAMETERS
    cfg = model.config
    assert (cfg.d_local, cfg.d_global, cfg.n_blocks, cfg.n_heads, cfg.d_key, cfg.d_value) == (128, 512, 6, 4, 64, 128)
    assert (cfg.local_feature_dim, cfg.global_feature_dim) == (1562, 15599)


def test_output_shapes(tiny_cfg):
    model = ProteinBERT(tiny_cfg)
    tokens = pad([encode("MKTAYIAKQR"), encode("MKV")], 16)
    ann = torch.zeros(2, tiny_cfg.n_annotations)
    out = model(tokens, ann, output_attentions=True, output_hidden_states=True)
    assert out.token_logits.shape == (2, 16, 26)
    assert out.annotation_logits.shape == (2, tiny_cfg.n_annotations)
    assert len(out.attentions) == tiny_cfg.n_blocks
    assert out.attentions[0].shape == (2, tiny_cfg.n_heads, 16)
    assert len(out.local_hidden) == 2 * tiny_cfg.n_blocks
    assert len(out.global_hidden) == 1 + 2 * tiny_cfg.n_blocks
    assert model(tokens).attentions is None  # only on request


def test_attention_weights_are_distributions_that_ignore_padding(tiny_cfg):
    model = ProteinBERT(tiny_cfg).eval()
    tokens = pad([encode("MKTAYIAKQR"), encode("MKV")], 16)
    out = model(tokens, output_attentions=True)
    for w in out.attentions:
        torch.testing.assert_close(w.sum(-1), torch.ones(2, tiny_cfg.n_heads))
        assert (w[1, :, 5:] == 0).all()  # 'MKV' framed is 5 tokens; the rest is <PAD>
        assert (w[1, :, :5] > 0).all()


def _paper_model_with_random_norms(padding_mask: bool) -> ProteinBERT:
    model = ProteinBERT(ModelConfig(padding_mask=padding_mask)).eval()
    with torch.no_grad():
        for p in model.parameters():  # non-trivial biases/LN so padding leaks would show
            p.add_(torch.randn_like(p) * 0.02)
    return model


@torch.no_grad()
def test_outputs_do_not_depend_on_padding_with_the_mask():
    model = _paper_model_with_random_norms(padding_mask=True)
    ids = encode("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAV")
    ann = (torch.rand(1, 8943) < 0.01).float()
    short, long = pad([ids], 64), pad([ids], 512)
    out_s = model(short, ann, output_attentions=True)
    out_l = model(long, ann, output_attentions=True)
    n = len(ids)
    torch.testing.assert_close(out_s.token_logits[:, :n], out_l.token_logits[:, :n], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_s.annotation_logits, out_l.annotation_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_s.attentions[-1][..., :n], out_l.attentions[-1][..., :n], atol=1e-5, rtol=0)


@torch.no_grad()
def test_without_the_mask_padding_leaks_as_in_the_original():
    model = _paper_model_with_random_norms(padding_mask=False)
    ids = encode("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAV")
    out_s, out_l = model(pad([ids], 64)), model(pad([ids], 512))
    assert (out_s.annotation_logits - out_l.annotation_logits).abs().max() > 1e-3


@torch.no_grad()
def test_batch_composition_does_not_change_a_sequence_output(tiny_cfg):
    model = ProteinBERT(tiny_cfg).eval()
    a, b = encode("MKTAYIAKQRQISFVKSHFSRQ"), encode("MK")
    alone = model(pad([b], len(b)))
    together = model(pad([a, b], len(a)))
    torch.testing.assert_close(together.token_logits[1, : len(b)], alone.token_logits[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(together.annotation_logits[1], alone.annotation_logits[0], atol=1e-5, rtol=0)


def test_explicit_pad_mask_overrides_token_derived_mask(tiny_cfg):
    model = ProteinBERT(tiny_cfg).eval()
    tokens = pad([encode("MKTAYIAKQR")], 12)
    corrupted = tokens.clone()
    corrupted[0, 3] = PAD_ID  # a noise token that happens to be <PAD> at a real position
    mask = tokens != PAD_ID
    with torch.no_grad():
        derived = model(corrupted, output_attentions=True)
        explicit = model(corrupted, pad_mask=mask, output_attentions=True)
    assert (derived.attentions[0][0, :, 3] == 0).all()
    assert (explicit.attentions[0][0, :, 3] > 0).all()


def test_annotation_shape_is_checked(tiny_cfg):
    model = ProteinBERT(tiny_cfg)
    with pytest.raises(ValueError, match="annotations must be"):
        model(pad([encode("MK")], 4), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="tokens must be"):
        model(torch.zeros(4, dtype=torch.long))


def test_config_checks():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_global=100, n_heads=3)
    with pytest.raises(ValueError, match="odd"):
        ModelConfig(conv_kernel_size=8)


def test_keras_style_initialisation(tiny_cfg):
    model = ProteinBERT(tiny_cfg)
    assert model.embedding.weight.abs().max() <= 0.05
    assert all((b.bias == 0).all() for b in model.modules() if isinstance(b, torch.nn.Linear))
    h, g, k = model.blocks[0].attention.Wq.shape
    assert model.blocks[0].attention.Wq.abs().max() <= (6 / ((g + k) * h)) ** 0.5


def test_save_and_from_pretrained_roundtrip(tmp_path, tiny_cfg):
    model = ProteinBERT(tiny_cfg).eval()
    model.save_pretrained(tmp_path / "m", metadata={"note": "test"})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = ProteinBERT.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == tiny_cfg
    tokens = pad([encode("MKTAYIAKQR")], 12)
    torch.testing.assert_close(loaded(tokens).token_logits, model(tokens).token_logits, atol=0, rtol=0)
    assert ProteinBERT.from_pretrained(tmp_path / "m", padding_mask=False).config.padding_mask is False


def test_from_pretrained_errors_name_the_problem(tmp_path, tiny_cfg):
    with pytest.raises(FileNotFoundError, match="config.json: missing"):
        ProteinBERT.from_pretrained(tmp_path)
    ProteinBERT(tiny_cfg).save_pretrained(tmp_path / "m")
    cfg_file = tmp_path / "m" / "config.json"
    cfg_file.write_text(cfg_file.read_text().replace('"n_blocks": 2', '"n_blocks": 3'))
    with pytest.raises(ValueError, match="weights do not match the config: missing"):
        ProteinBERT.from_pretrained(tmp_path / "m")
    cfg_file.write_text(cfg_file.read_text().replace('"n_blocks": 3', '"n_blocks": 2, "colour": 1'))
    with pytest.raises(ValueError, match=r"unknown model config keys \['colour'\]"):
        ProteinBERT.from_pretrained(tmp_path / "m")
    cfg_file.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ProteinBERT.from_pretrained(tmp_path / "m")
    for uri in ("s3://pbp-runs/pretrain/tiny/final_model/", "models:/pb@champion"):  # read as 's3:/pbp-runs/...'
        with pytest.raises(ValueError, match=r"from_pretrained reads a local directory; .*load_model\(URI\)\.body"):
            ProteinBERT.from_pretrained(uri)


def test_bf16_autocast_runs_and_stays_close(tiny_cfg):
    model = ProteinBERT(tiny_cfg).eval()
    tokens = pad([encode("MKTAYIAKQRQISFVKSHFSRQ")], 24)
    with torch.no_grad():
        ref = model(tokens).token_logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(tokens).token_logits
    assert (low.float() - ref).abs().max() < 0.1
