"""Parsers read every record of each shared file; local WikiText rows match the hub's format."""
from __future__ import annotations

import pytest

from kscale.data import DataError, load_corpus, load_task_data


def test_wikitext2_rows_and_documents(data_dir):
    c = load_corpus("wikitext2", data_dir=data_dir, source="local")
    assert len(c.rows) == 4358
    assert c.rows[0] == "" and c.rows[1] == " = Robert Boulter = \n"  # blank -> "", content -> line + "\n"
    assert len(c.joined()) == 1_294_336
    assert len(c.documents) == 62 and c.documents[0].startswith(" = Robert Boulter = ")


def test_ptb(data_dir):
    c = load_corpus("ptb", data_dir=data_dir, source="local")
    assert len(c.rows) == 3761 and c.rows[0] == "no it was n't black monday"


@pytest.mark.parametrize("task,n", [("lambada", 5153), ("piqa", 1838), ("hellaswag", 10042), ("winogrande", 1267)])
def test_task_record_counts(data_dir, task, n):
    docs = load_task_data(task, data_dir=data_dir, source="local")
    assert len(docs) == n


def test_task_record_fields(data_dir):
    piqa = load_task_data("piqa", data_dir=data_dir)
    assert piqa[0].goal.startswith("How do I ready a guinea pig cage") and piqa[0].label == 0
    hs = load_task_data("hellaswag", data_dir=data_dir)
    assert hs[0].query == "Roof shingle removal: A man is sitting on a roof. he"
    assert hs[0].label == 3 and hs[0].endings[3] == "starts pulling up roofing on a roof."
    wg = load_task_data("winogrande", data_dir=data_dir)
    assert wg[0].option2 == "Maria" and wg[0].answer == 2
    lam = load_task_data("lambada", data_dir=data_dir)
    assert lam[0].target == " " + lam[0].text.split(" ")[-1]
    assert lam[0].context + lam[0].target == lam[0].text


def test_missing_and_offline_errors(tmp_path):
    with pytest.raises(DataError, match="not found at"):
        load_corpus("wikitext2", data_dir=tmp_path, source="local")
    with pytest.raises(DataError, match="hub is disabled"):  # conftest sets HF_HUB_OFFLINE=1
        load_corpus("c4", data_dir=tmp_path)
    with pytest.raises(DataError, match="hub is disabled"):
        load_task_data("piqa", data_dir=tmp_path, source="auto")
    with pytest.raises(ValueError, match="data source must be one of"):
        load_corpus("ptb", source="web")
    with pytest.raises(ValueError, match="Did you mean 'wikitext2'"):
        load_corpus("wikitext")


def test_text_file(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("one two\nthree\n\nfour five\n")
    c = load_corpus("text", path=str(f))
    assert c.rows == ("one two", "three", "", "four five")
    assert c.documents == ("one two\nthree", "four five\n")
