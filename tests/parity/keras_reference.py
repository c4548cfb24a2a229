"""Build the ORIGINAL ProteinBERT (Keras, PyPI ``protein-bert``) with seeded random weights and record its outputs.

Runs in .venv-parity (``make parity``), never in pbp's environment. Writes into --out:
    checkpoint.pkl   the original's checkpoint layout: pickle of (n_annotations, weights, optimizer_weights)
    reference.npz    per case: tokens and annotations fed to Keras, softmax token probabilities, sigmoid annotation
                     probabilities
    sequences.json   the raw sequences per case, so pbp's tokenizer is checked against the original's too
"""

import argparse
import json
import os
import pickle
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from proteinbert import conv_and_global_attention_model
from proteinbert.model_generation import tokenize_seqs
from proteinbert.tokenization import n_tokens

AAS = "ACDEFGHIKLMNPQRSTUVWXY"
N_ANNOTATIONS = 8943


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    tf.random.set_seed(args.seed)

    weights = None
    arrays: dict[str, np.ndarray] = {}
    sequences: dict[str, list[str]] = {}
    # Two lengths: the weights do not depend on seq_len, as in the original.
    for case, (seq_len, lengths) in {"L64": (64, [62, 40, 5, 1, 30]), "L300": (300, [298, 250, 100, 17])}.items():
        model = conv_and_global_attention_model.create_model(seq_len, n_tokens, N_ANNOTATIONS)
        if weights is None:
            assert model.count_params() == 15_981_321, model.count_params()
            # Keras' init leaves biases at 0 and LayerNorm gains at 1; perturb everything so the mapping is tested.
            weights = [w + rng.normal(0.0, 0.02, w.shape).astype(w.dtype) for w in model.get_weights()]
        model.set_weights(weights)
        seqs = ["".join(rng.choice(list(AAS + "BZ"), n)) for n in lengths]  # B/Z exercise <OTHER>
        tokens = tokenize_seqs(seqs, seq_len)
        annotations = (rng.random((len(seqs), N_ANNOTATIONS)) < 0.002).astype(np.int8)
        annotations[-1] = 0  # one protein without annotation input, as in fine-tuning
        token_probs, annotation_probs = model.predict([tokens, annotations], verbose=0)
        arrays.update(
            {
                f"{case}_tokens": tokens,
                f"{case}_annotations": annotations,
                f"{case}_token_probs": token_probs,
                f"{case}_annotation_probs": annotation_probs,
            }
        )
        sequences[case] = seqs
    with (out / "checkpoint.pkl").open("wb") as f:
        pickle.dump((N_ANNOTATIONS, weights, []), f)
    np.savez(out / "reference.npz", **arrays)
    (out / "sequences.json").write_text(json.dumps(sequences, indent=1))
    print(f"wrote {out}/checkpoint.pkl ({len(weights)} arrays), reference.npz, sequences.json")


if __name__ == "__main__":
    main()
