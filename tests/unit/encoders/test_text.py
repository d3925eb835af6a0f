"""Tests for encoders.text: offline loading, tokenisation, per-word embeddings against a direct forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regionrank.encoders import text

TINY_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=32)


@pytest.fixture(scope="module")
def tiny():
    return text.build_random_text_model(TINY_BERT, seed=0)


def test_default_text_model_is_the_installed_minilm():
    folder = text.default_text_model_path()
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()


def test_missing_folder_raises_with_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        text.load_text_model(tmp_path / "no-such-model")


def test_random_model_is_seeded_and_leaves_global_rng_alone(tiny):
    state = torch.get_rng_state()
    tok, again = text.build_random_text_model(TINY_BERT, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(tiny[1].state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    _, other = text.build_random_text_model(TINY_BERT, seed=1)
    assert not torch.equal(other.embeddings.word_embeddings.weight, again.embeddings.word_embeddings.weight)
    assert len(tok) == again.config.vocab_size


def test_tokenize_pads_and_reports_lengths_and_tokens(tiny):
    tok, _ = tiny
    batch = text.tokenize(tok, ["A cat sat.", "dogs"], max_length=16)
    assert batch.tokens[0] == ["[CLS]", "a", "cat", "sat", ".", "[SEP]"] and batch.tokens[1] == ["[CLS]", "dogs", "[SEP]"]
    assert batch.lengths.tolist() == [6, 3] and batch.input_ids.shape == (2, 6)
    assert batch.attention_mask.sum(1).tolist() == [6, 3] and batch.input_ids[1, 3:].tolist() == [0, 0, 0]
    assert text.tokenize(tok, ["word " * 40], max_length=8).lengths.tolist() == [8]
    with pytest.raises(ValueError, match="non-empty sequence"):
        text.tokenize(tok, "a cat")


def test_embed_words_is_mean_of_wordpiece_states_of_the_word_alone(tiny):
    tok, model = tiny
    words = ["cat", "hot dog", "skateboarding"]
    got = text.embed_words(tok, model, words, batch_size=2)
    assert got.shape == (3, 16) and got.dtype == np.float32
    model.eval()
    for word, vec in zip(words, got):
        ids = tok(word, return_tensors="pt")["input_ids"]  # [CLS] pieces [SEP], no padding
        with torch.no_grad():
            states = model(input_ids=ids).last_hidden_state[0, 1:-1]
        ref = states.mean(0)
        ref = (ref / ref.norm()).numpy()
        np.testing.assert_allclose(vec, ref, rtol=1e-5, atol=1e-6)
    # context-free: the same word gets the same vector whatever it is batched with
    np.testing.assert_allclose(text.embed_words(tok, model, ["cat"])[0], got[0], rtol=1e-5, atol=1e-6)
    assert text.embed_words(tok, model, []).shape == (0, 16)


def test_split_words_and_stop_words():
    assert text.split_words("A man's red Car, 2 dogs!") == ["a", "man's", "red", "car", "2", "dogs"]
    assert {"a", "the", "on", "with", "is"} <= text.STOP_WORDS and not {"cat", "red", "man"} & text.STOP_WORDS
