"""Parity with the ORIGINAL ProteinBERT (Keras). The reference is built by `make parity` / `make test`
(tests/parity/keras_reference.py in .venv-parity) and pointed to by PBP_PARITY_DIR."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pbp.cli.main import main
from pbp.model import ProteinBERT
from pbp.model.tokenizer import encode, pad

pytestmark = pytest.mark.parity

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference() -> Path:
    d = os.environ.get("PBP_PARITY_DIR")
    if not d or not (Path(d) / "reference.npz").is_file():
        pytest.skip("no Keras reference: run `make parity` (sets PBP_PARITY_DIR)")
    return Path(d)


@pytest.fixture(scope="module")
def imported(reference, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "model"
    assert main(["model", "import-keras", str(reference / "checkpoint.pkl"), "--out", str(out)]) == 0
    return out


def _cases(reference):
    ref = np.load(reference / "reference.npz")
    seqs = json.loads((reference / "sequences.json").read_text())
    return ref, seqs


def test_imported_model_has_the_paper_parameter_count(imported):
    assert ProteinBERT.from_pretrained(imported).num_parameters() == 15_981_321


def test_tokenizer_matches_the_original(reference):
    ref, seqs = _cases(reference)
    for case, case_seqs in seqs.items():
        keras_tokens = ref[f"{case}_tokens"]
        ours = pad([encode(s) for s in case_seqs], keras_tokens.shape[1]).numpy()
        np.testing.assert_array_equal(ours, keras_tokens)


@pytest.mark.parametrize("case", ["L64", "L300"])
@torch.no_grad()
def test_outputs_match_keras_with_the_padding_mask_off(reference, imported, case):
    ref, _ = _cases(reference)
    model = ProteinBERT.from_pretrained(imported, padding_mask=False).eval()
    out = model(torch.from_numpy(ref[f"{case}_tokens"]).long(), torch.from_numpy(ref[f"{case}_annotations"]))
    token_probs = torch.softmax(out.token_logits, -1).numpy()
    annotation_probs = torch.sigmoid(out.annotation_logits).numpy()
    np.testing.assert_allclose(token_probs, ref[f"{case}_token_probs"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(annotation_probs, ref[f"{case}_annotation_probs"], atol=TOLERANCE, rtol=0)


@torch.no_grad()
def test_unpadded_sequence_matches_keras_with_the_mask_on(reference, imported):
    """The first L64 sequence fills all 64 positions, so the padding mask changes nothing for it."""
    ref, seqs = _cases(reference)
    assert len(seqs["L64"][0]) + 2 == 64
    model = ProteinBERT.from_pretrained(imported).eval()
    assert model.config.padding_mask
    out = model(torch.from_numpy(ref["L64_tokens"][:1]).long(), torch.from_numpy(ref["L64_annotations"][:1]))
    np.testing.assert_allclose(
        torch.softmax(out.token_logits, -1).numpy(), ref["L64_token_probs"][:1], atol=TOLERANCE, rtol=0
    )
