"""The restricted unpickler builds plain data from the pickles users hold and refuses pickles that carry code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from regionrank.storage.plain_pickle import PlainObject, UnsafePickleError, load_plain_pickle

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "reference"


class Vocabulary:  # the shape of SCAN's / VSE++'s vocab.Vocabulary
    def __init__(self) -> None:
        self.word2idx = {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3, "dog": 4}
        self.idx2word = {v: k for k, v in self.word2idx.items()}
        self.idx = 5


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_an_allowed_object_comes_back_as_its_attribute_dict(protocol: int) -> None:
    obj = load_plain_pickle(pickle.dumps(Vocabulary(), protocol=protocol), allowed_objects={"Vocabulary"})
    assert isinstance(obj, PlainObject) and obj.name == "Vocabulary"
    assert obj.state["word2idx"]["dog"] == 4 and obj.state["idx"] == 5
    assert obj.state["idx2word"][4] == "dog"


def test_the_reference_vocabulary_pickle_loads_as_plain_data() -> None:
    obj = load_plain_pickle(FIXTURES / "scan_vocab.pkl", allowed_objects={"Vocabulary"})
    assert (obj.module, obj.name) == ("vocab", "Vocabulary")
    assert [obj.state["word2idx"][w] for w in ("<pad>", "<start>", "<end>", "<unk>")] == [0, 1, 2, 3]


def test_python2_byte_strings_are_decoded() -> None:
    # protocol-2 pickle of {'word2idx': {'dog': 4}} as Python 2 writes it (SHORT_BINSTRING for str)
    data = b"\x80\x02}q\x00U\x08word2idxq\x01}q\x02U\x03dogq\x03K\x04ss."
    assert load_plain_pickle(data) == {"word2idx": {"dog": 4}}


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_carrying_code_is_refused_and_nothing_runs(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "executed"
    evil = tmp_path / "vocab.pkl"
    evil.write_bytes(pickle.dumps({"word2idx": _RunsCode(marker)}, protocol=protocol))
    with pytest.raises(UnsafePickleError, match=r"(posix|os|nt)\.system.*refused, nothing was executed"):
        load_plain_pickle(evil, allowed_objects={"Vocabulary"})
    assert not marker.exists()


def test_an_object_that_is_not_allowed_is_refused() -> None:
    with pytest.raises(UnsafePickleError, match="Vocabulary"):
        load_plain_pickle(pickle.dumps(Vocabulary(), protocol=2))


def test_not_a_pickle_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_plain_pickle(b"\x80\x02}q\x00")
    with pytest.raises(FileNotFoundError):
        load_plain_pickle(tmp_path / "missing.pkl")
