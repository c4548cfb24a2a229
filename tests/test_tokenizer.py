import random

import pytest
import torch

from pbp.model import tokenizer as tk


def test_vocabulary_matches_the_original():
    assert tk.VOCAB_SIZE == 26
    assert [tk.TOKEN_TO_ID[a] for a in "ACDEFGHIKLMNPQRSTUVWXY"] == list(range(22))
    assert (tk.OTHER_ID, tk.START_ID, tk.END_ID, tk.PAD_ID) == (22, 23, 24, 25)


def test_encode_frames_with_start_and_end():
    assert tk.encode("ACY") == [23, 0, 1, 21, 24]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("acdef", "ACDEF"),  # lowercase
        ("MK TA\r\nYI\tAK\n", "MKTAYIAK"),  # whitespace and CRLF from wrapped FASTA lines
        ("1 MKTAYI 7 AKQR", "MKTAYIAKQR"),  # GenBank-style position numbers
        ("MKV*", "MKV"),  # trailing stop codon
    ],
)
def test_normalisation_policy(raw, clean):
    assert tk.normalize_sequence(raw, "P1") == clean


def test_unknown_characters_become_other_and_are_counted():
    stats = tk.TokenStats()
    ids = tk.encode("MBZ*K*", "P1", stats=stats)  # inner '*' stays unknown; the final one is a stop codon
    assert ids == [23, 10, 22, 22, 22, 8, 24]
    assert stats.other == {"B": 1, "Z": 1, "*": 1}
    assert stats.stop_codons_removed == 1
    assert stats.residues == 5 and stats.sequences == 1


def test_strict_policy_rejects_unknown_characters_naming_record_and_position():
    with pytest.raises(tk.SequenceError, match=r"record 'sp\|P12345'.*'B' at residue 3"):
        tk.encode("MKBA", "sp|P12345", unknown="error")


@pytest.mark.parametrize("raw", ["", "   \n", "*", "123"])
def test_empty_sequences_are_rejected_naming_the_record(raw):
    with pytest.raises(tk.SequenceError, match="record 'Q9XYZ1': empty sequence"):
        tk.encode(raw, "Q9XYZ1")


def test_non_ascii_is_rejected_naming_the_record():
    with pytest.raises(tk.SequenceError, match="record 'P1'.*non-ASCII"):
        tk.encode("MKÅV", "P1")
    with pytest.raises(tk.SequenceError, match="record 'P2'.*non-ASCII"):
        tk.encode("MK\xc3\x85V".encode("latin-1"), "P2")


def test_bytes_input_is_accepted():
    assert tk.encode(b"MK") == [23, 10, 8, 24]


def test_random_crop_is_a_contiguous_window_of_seq_len():
    ids = list(range(100))
    rng = random.Random(0)
    seen_offsets = set()
    for _ in range(200):
        window = tk.random_crop(ids, 10, rng)
        assert len(window) == 10
        assert window == list(range(window[0], window[0] + 10))
        seen_offsets.add(window[0])
    assert min(seen_offsets) == 0 and max(seen_offsets) == 90  # both ends reachable
    assert tk.random_crop([1, 2, 3], 10, rng) == [1, 2, 3]


def test_encode_batch_pads_right_to_the_longest_and_never_truncates_silently():
    batch = tk.encode_batch(["MKV", "A"], ["a", "b"])
    assert batch.tolist() == [[23, 10, 8, 18, 24], [23, 0, 24, 25, 25]]
    with pytest.raises(tk.SequenceTooLongError, match="record 'long'.*max_len=4"):
        tk.encode_batch(["MKVL"], ["long"], max_len=4)


def test_encode_batch_explicit_crop_is_counted():
    stats = tk.TokenStats()
    batch = tk.encode_batch(["MKVLA"], max_len=4, on_too_long="crop_start", stats=stats)
    assert batch.shape == (1, 4) and stats.cropped == 1
    centre = tk.encode_batch(["MKVLA"], max_len=3, on_too_long="crop_center")
    assert centre.tolist() == [[8, 18, 9]]


def test_encode_batch_pad_to_multiple():
    assert tk.encode_batch(["MKV"], pad_to_multiple_of=8).shape == (1, 8)


def test_pad_refuses_too_long_rows():
    with pytest.raises(ValueError, match="row 0"):
        tk.pad([[1, 2, 3]], 2)
    assert tk.pad([[1]], 3).dtype == torch.long


def test_decode_roundtrip():
    assert tk.decode(tk.encode("MKBV")) == "MK?V"
