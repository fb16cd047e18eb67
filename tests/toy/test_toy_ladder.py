"""The toy ladder: training, caching, loading like a hub model, determinism, held-out corpus."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import kscale.toy  # noqa: F401  (registers the family, provider and corpus)
from kscale.data.corpus import CORPORA
from kscale.models.family import FAMILIES, PROVIDERS
from kscale.toy.ladder import LADDER, SIZES, ToyOptions, data_source, load_toy_corpus, train_checkpoint
from kscale.toy.tokenizer import build_tokenizer

# A tiny language and ladder: trains in a few CPU-seconds, still shows the size effect.
TINY = {
    "language": {"vocab_size": 24, "n_bigram": 6, "n_successors": 2, "alpha": 0.5, "seed": 5},
    "seqlen": 16,
    "tokens_per_param": 8,
    "lr": 0.02,
    "min_steps": 40,
    "progress": False,
    "ladder": {
        "a": {"n_layer": 1, "d_model": 2, "n_head": 1, "batch_size": 4},
        "b": {"n_layer": 1, "d_model": 8, "n_head": 2, "batch_size": 8},
        "c": {"n_layer": 1, "d_model": 24, "n_head": 2, "batch_size": 16},
    },
    "corpus_tokens": 6000,
    "doc_tokens": 1500,
    "row_tokens": 50,
}


def _nll(model, ids: torch.Tensor, seqlen: int) -> float:
    """Mean NLL (nats/token) over non-overlapping windows, every token after the first of a window."""
    windows = ids[: len(ids) // seqlen * seqlen].view(-1, seqlen)
    with torch.no_grad():
        return float(model(input_ids=windows, labels=windows).loss)


@pytest.fixture(scope="module")
def ladder():
    provider = PROVIDERS.get("toy")
    before = provider.n_trained
    paths = provider.ensure(["a", "b", "c"], TINY)
    assert provider.n_trained == before + 3
    return paths


def test_registrations():
    fam = FAMILIES.get("toy")
    assert fam.provider == "toy" and list(fam.sizes) == list(SIZES) and list(SIZES)[: len(LADDER)] == list(LADDER)
    assert fam.seqlen == ToyOptions().train.seqlen
    assert CORPORA.get("toy") is load_toy_corpus


def test_default_ladder_is_one_shape_family_growing_geometrically():
    """Issue 17 §1: the rungs differ in width only (same depth, head width and batch), so the
    token budget, not a change of recipe, sets each rung's optimizer steps."""
    from kscale.toy.train import build_model, n_params, train_steps

    shapes = list(LADDER.values())
    assert len({(s.n_layer, s.batch_size) for s in shapes}) == 1
    assert all(s.d_model // s.n_head == 8 and s.d_model % 8 == 0 for s in shapes)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        counts = [n_params(build_model("gpt2", s, 130, 64, 129, 0)) for s in shapes]
    assert len(counts) >= 4 and counts[-1] / counts[0] >= 6
    ratios = np.diff(np.log(counts))
    assert (ratios > np.log(1.5)).all() and (ratios < np.log(2.5)).all()  # geometric-ish steps
    steps = [train_steps(ToyOptions().train, n, s.batch_size) for n, s in zip(counts, shapes)]
    np.testing.assert_allclose(np.array(steps) / counts, steps[0] / counts[0], rtol=0.01)  # steps ~ N


def test_ladder_round_trips_through_auto_classes_and_losses_fall_with_size(ladder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus = load_toy_corpus(**TINY, split="test")
    src = data_source(ToyOptions.from_mapping(TINY))
    lang = src.language
    true_ids = np.array([lang.words.index(w) for w in " ".join(corpus.rows).split()])
    losses = {}
    for size, path in ladder.items():
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        stats = json.loads((path / "train_stats.json").read_text())
        assert sum(p.numel() for p in model.parameters()) == stats["n_params"]
        assert (path / "model.safetensors").is_file()
        # GPTQ's protocol joins rows with "\n\n": the tokenizer must give exactly the language's
        # ids, with no BOS/EOS added
        ids = tok("\n\n".join(corpus.rows), return_tensors="pt")["input_ids"][0]
        np.testing.assert_array_equal(ids.numpy(), true_ids)
        losses[size] = _nll(model, ids, 16)
    # exact lower bound on the same tokens: the true model's cross-entropy (positions >= 2)
    floor = float(-lang.log_probs(true_ids.reshape(-1, 16)).mean())
    assert losses["a"] > losses["b"] > losses["c"] > floor, (losses, floor)
    assert losses["a"] - losses["c"] > 0.3  # size matters by a wide margin, not by noise
    # untrained = log(vocab); even the 2-wide rung learned something
    assert losses["a"] < np.log(26) - 0.1


def test_kscale_models_load_model_reads_the_ladder(ladder):
    import kscale.models as km

    if not all(hasattr(km, n) for n in ("load_model", "resolve_models", "prepare_models")):
        pytest.skip("kscale.models.load_model not available yet")
    # the toy family's sizes are the default ladder; a custom ladder is loaded via local_paths
    specs = km.resolve_models("toy", ["L1-d4"], local_paths={"L1-d4": str(ladder["b"])})
    loaded = km.load_model(specs[0])
    ref = json.loads((ladder["b"] / "train_stats.json").read_text())
    assert loaded.n_params == ref["n_params"]
    words = data_source(ToyOptions.from_mapping(TINY)).words
    text = " ".join(words[:5] + ["not-a-word"])
    assert loaded.tokenizer(text)["input_ids"] == build_tokenizer(words)(text)["input_ids"] == [0, 1, 2, 3, 4, 24]


def test_locate_matches_ensure_and_second_ensure_trains_nothing(ladder):
    provider = PROVIDERS.get("toy")
    for size, path in ladder.items():
        assert provider.locate(size, TINY) == path
    mtimes = {s: (p / "model.safetensors").stat().st_mtime_ns for s, p in ladder.items()}
    before = provider.n_trained
    again = provider.ensure(["c", "a"], TINY)
    assert provider.n_trained == before
    assert {s: (p / "model.safetensors").stat().st_mtime_ns for s, p in again.items()} == {
        s: mtimes[s] for s in again
    }
    # the key covers what defines the weights, not where they were trained
    assert provider.locate("a", {**TINY, "device": "cpu:0"}) == ladder["a"]
    assert provider.locate("a", {**TINY, "tokens_per_param": 8.0, "progress": True}) == ladder["a"]
    assert provider.locate("a", {**TINY, "seed": 1}) != ladder["a"]
    assert provider.locate("a", {**TINY, "tokens_per_param": 9}).parent != ladder["a"].parent


def test_concurrent_ensure_trains_once(tmp_path, monkeypatch):
    monkeypatch.setenv("KSCALE_CACHE_DIR", str(tmp_path))
    provider = PROVIDERS.get("toy")
    before = provider.n_trained
    results, errors = [], []

    def job():
        try:
            results.append(provider.ensure(["a"], TINY)["a"])
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert provider.n_trained == before + 1
    assert results[0] == results[1] and (results[0] / "train_stats.json").is_file()
    assert not [p for p in results[0].parent.iterdir() if ".tmp-" in p.name]  # temp dir renamed away


def test_training_is_deterministic_given_the_seed(tmp_path):
    opts = ToyOptions.from_mapping(TINY)
    train_checkpoint("a", opts, tmp_path / "x")
    train_checkpoint("a", opts, tmp_path / "y")
    train_checkpoint("a", ToyOptions.from_mapping({**TINY, "seed": 1}), tmp_path / "z")
    x, y, z = (load_file(tmp_path / d / "model.safetensors") for d in "xyz")
    assert x.keys() == y.keys()
    for k in x:
        assert torch.equal(x[k], y[k]), k
    assert any(not torch.equal(x[k], z[k]) for k in x)


def test_corpus_is_deterministic_held_out_and_sized():
    a = load_toy_corpus(**TINY, split="test")
    b = CORPORA.get("toy")(data_dir=None, split="test", source="auto", path=None, **TINY)
    assert a == b and a.name == "toy"
    words = " ".join(a.rows).split()
    assert len(words) == TINY["corpus_tokens"]
    assert len(a.documents) == 4 and all(len(d.split()) == 1500 for d in a.documents)
    assert " ".join(a.documents).split() == words
    assert load_toy_corpus(**TINY, split="validation") != a
    assert len(" ".join(load_toy_corpus(**TINY, n_tokens=321).rows).split()) == 321


def test_calibration_draws_fresh_text_not_the_evaluated_split():
    """Issue 17 §3: a calibrated method given no split calibrates on ``calib``, generated from its
    own seed stream: not the evaluated ``test`` text, and recorded as such in the row."""
    from kscale.quant.calibration import CalibrationConfig, calibration_tokens

    calib = load_toy_corpus(**TINY)
    assert calib == load_toy_corpus(**TINY, split="calib")  # the default split, deterministic
    test_words = " ".join(load_toy_corpus(**TINY, split="test").rows).split()
    calib_words = " ".join(calib.rows).split()
    assert len(calib_words) == len(test_words) and calib_words != test_words
    assert sum(a == b for a, b in zip(calib_words, test_words)) < 0.3 * len(test_words)  # independent draws
    tokenizer = build_tokenizer(data_source(ToyOptions.from_mapping(TINY)).words)
    cal = calibration_tokens(CalibrationConfig(dataset="toy", nsamples=4), tokenizer, seqlen=16,
                             corpus_options=TINY)
    assert cal.config.to_row()["calib_split"] == "calib" and tuple(cal.tokens.shape) == (4, 16)


def test_corpus_is_disjoint_from_the_training_stream():
    # default language (~2.5 nats/token): a shared 40-gram between independent streams has
    # probability ~exp(-99) per pair of positions; a copied stream would share all of them.
    opts = ToyOptions.from_mapping({"corpus_tokens": 4000})
    src = data_source(opts)
    n = 40
    train_grams = set()
    for batch in src.batches(opts.seed)(100, 16, opts.train.seqlen):
        for row in batch:
            train_grams.update(tuple(row[i : i + n]) for i in range(len(row) - n + 1))
    assert len(train_grams) > 1000
    for split in ("test", "calib"):
        text = " ".join(load_toy_corpus(corpus_tokens=4000, split=split).rows).split()
        held = np.array([src.language.words.index(w) for w in text])
        held_grams = {tuple(held[i : i + n]) for i in range(len(held) - n + 1)}
        assert not (held_grams & train_grams), split


def test_conf_model_toy_yaml_describes_the_default_ladder():
    import yaml

    from kscale.paths import PROJECT_ROOT

    conf = yaml.safe_load((PROJECT_ROOT / "conf" / "model" / "toy.yaml").read_text())
    assert conf["name"] == "toy" and conf["sizes"] == list(LADDER)
    # the YAML's options are the defaults: same cache directory as no options at all
    provider = PROVIDERS.get("toy")
    assert provider.locate("L1-d4", conf["provider_options"]) == provider.locate("L1-d4", {})


def test_option_validation_names_the_rule():
    with pytest.raises(ValueError, match="unknown toy provider option"):
        ToyOptions.from_mapping({"tokens_per_parm": 20})
    with pytest.raises(ValueError, match="unknown language option"):
        ToyOptions.from_mapping({"language": {"vocab": 10}})
    with pytest.raises(KeyError, match="Did you mean 'llama'"):
        ToyOptions.from_mapping({"architecture": "lama"})
    with pytest.raises(ValueError, match="unknown toy size"):
        PROVIDERS.get("toy").locate("huge", {})
    with pytest.raises(ValueError, match="unknown toy split"):
        load_toy_corpus(split="dev")


@pytest.mark.parametrize("architecture, model_type", [("opt", "opt"), ("llama", "llama")])
def test_other_architectures_train_and_load(tmp_path, architecture, model_type):
    from transformers import AutoModelForCausalLM

    opts = ToyOptions.from_mapping({**TINY, "architecture": architecture, "tokens_per_param": 1, "min_steps": 30})
    stats = train_checkpoint("b", opts, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    assert model.config.model_type == model_type
    assert sum(p.numel() for p in model.parameters()) == stats["n_params"]
    # 30 steps at lr 0.02 already beat the uniform distribution over 26 ids
    assert stats["final_loss"] < np.log(26) - 0.2


def test_cli_entropy_prints_the_exact_rate(capsys):
    from kscale.toy.__main__ import main

    assert main(["entropy", "--vocab-size", "24", "--language-seed", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    lang = data_source(ToyOptions.from_mapping({"language": {"vocab_size": 24, "seed": 5}})).language
    assert out["entropy_rate_nats"] == pytest.approx(lang.entropy_rate, rel=1e-12)
    assert out["unigram_entropy_nats"] > out["bigram_entropy_nats"] > out["entropy_rate_nats"]


def test_text_file_mode_trains_on_a_local_file(tmp_path, data_dir):
    text_path = data_dir / "wikitext-2-raw" / "wiki.test.raw"
    options = {**TINY, "text_path": str(text_path), "max_vocab": 200, "tokens_per_param": 1, "min_steps": 20}
    opts = ToyOptions.from_mapping(options)
    assert data_source(opts).entropy_rate is None and kscale.toy.entropy_rate(options) is None
    stats = train_checkpoint("b", opts, tmp_path)
    assert stats["final_loss"] < np.log(202) - 0.5  # learned at least the unigram frequencies
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert len(tok) == 202
    assert tok("the zzzunseenzzz")["input_ids"] == [data_source(opts).words.index("the"), 200]
    corpus = load_toy_corpus(**options, split="test")
    lines = text_path.read_text(encoding="utf-8").splitlines()
    held = [ln for ln in lines[int(0.9 * len(lines)):] if ln.strip()]
    assert corpus.rows == tuple(held)


def test_corpus_and_entropy_rate_come_from_the_cache_without_building_the_language(tmp_path, monkeypatch, ladder):
    """A toy job's fixed cost: its held-out text and E are read back from the cache (the text
    written on first generation, E from a trained rung's stats), identical to computing them,
    and building the language is then not needed at all."""
    import os

    import kscale.toy.ladder as toy_ladder

    trained_cache = os.environ["KSCALE_CACHE_DIR"]  # where the module's ladder was trained
    opts = ToyOptions.from_mapping(TINY)
    exact = data_source(opts).entropy_rate
    monkeypatch.setenv("KSCALE_CACHE_DIR", str(tmp_path))
    fresh = load_toy_corpus(**TINY, n_tokens=777, split="test")  # generated, and written to the cache
    cached_file = toy_ladder._corpus_cache_path(opts, "test", 777)
    assert cached_file.is_file()

    def no_language(_opts):
        raise AssertionError("the language was built although the cache had the answer")

    import kscale.toy.sources as toy_sources

    monkeypatch.setattr(toy_ladder, "data_source", no_language)  # E
    monkeypatch.setattr(toy_sources, "data_source", no_language)  # the corpus
    assert load_toy_corpus(**TINY, n_tokens=777, split="test") == fresh
    with pytest.raises(AssertionError, match="the language was built"):
        load_toy_corpus(**TINY, n_tokens=778, split="test")  # another request is not served from that file
    with pytest.raises(AssertionError, match="the language was built"):
        toy_ladder.entropy_rate(TINY)  # no trained rung in this cache: E must be computed
    monkeypatch.setenv("KSCALE_CACHE_DIR", trained_cache)
    assert toy_ladder.entropy_rate(TINY) == exact  # from train_stats.json, bit for bit
    # a damaged cache file is regenerated, not trusted
    monkeypatch.undo()
    monkeypatch.setenv("KSCALE_CACHE_DIR", str(tmp_path))
    cached_file.write_text("{not json")
    assert load_toy_corpus(**TINY, n_tokens=777, split="test") == fresh
    assert json.loads(cached_file.read_text())["documents"] == list(fresh.documents)
