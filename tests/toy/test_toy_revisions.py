"""Checkpoints over training for the toy ladder (issue 11 §1): snapshots of one run, loadable,
at the right step, the final weights and cache key unchanged, old caches completed."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import kscale.toy  # noqa: F401  (registers the family, provider and corpus)
from kscale.models import ModelConfigError, load_model, prepare_models, resolve_models
from kscale.models.family import PROVIDERS
from kscale.toy.ladder import ToyOptions, data_source, snapshot_steps, train_checkpoint

# One tiny rung of a custom ladder (trains in about a second)
TINY = {
    "language": {"vocab_size": 24, "n_bigram": 6, "n_successors": 2, "alpha": 0.5, "seed": 5},
    "seqlen": 16, "tokens_per_param": 8, "lr": 0.02, "min_steps": 40, "progress": False,
    "ladder": {"b": {"n_layer": 1, "d_model": 8, "n_head": 2, "batch_size": 8}},
    "corpus_tokens": 3000, "doc_tokens": 1500, "row_tokens": 50,
}
TINY_REVISIONS = ["tpp0.25", "tpp0.5", "tpp1", "tpp2", "tpp4", "tpp8"]
# The default ladder's first two rungs on a small budget, for resolve_models (whose size table
# is the default ladder): 48 steps of 4 x 64 and 8 x 64 tokens (a cache key no other test uses)
SMALL = {"tokens_per_param": 2, "min_steps": 48, "progress": False, "snapshots": 3}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same rung trained with the default 6 snapshots and with none (snapshots=1)."""
    root = tmp_path_factory.mktemp("toy-revisions")
    with_snaps = train_checkpoint("b", ToyOptions.from_mapping(TINY), root / "six")
    without = train_checkpoint("b", ToyOptions.from_mapping({**TINY, "snapshots": 1}), root / "one")
    return root, with_snaps, without


def test_default_cache_key_is_unchanged_by_revisions():
    # snapshots are not part of the key; the key of the ladder trained before CPU numerics were
    # pinned (issue 17 §2: two reachable states across machines) is stale by design
    assert ToyOptions.from_mapping({"snapshots": 1}).key() == ToyOptions().key()
    assert ToyOptions().key() != "1ab46925932350c6"


def test_revision_names_are_nominal_tokens_per_param():
    assert list(ToyOptions.from_mapping(TINY).revisions()) == TINY_REVISIONS
    assert list(ToyOptions().revisions()) == ["tpp0.625", "tpp1.25", "tpp2.5", "tpp5", "tpp10", "tpp20"]
    assert ToyOptions().final_revision == "tpp20"
    assert list(ToyOptions.from_mapping({"snapshots": 1}).revisions()) == ["tpp20"]
    assert snapshot_steps(81, 6) == {1: 40, 2: 20, 3: 10, 4: 5, 5: 3}  # round(81 / 2**j)
    with pytest.raises(ValueError, match="snapshots must be an integer in 1..16"):
        ToyOptions.from_mapping({"snapshots": 0})
    with pytest.raises(ValueError, match="unknown toy revision 'tpp3'.*tpp0.625, tpp1.25"):
        ToyOptions().halvings("tpp3")


def test_snapshots_leave_the_final_weights_bit_identical(runs):
    root, with_snaps, without = runs
    assert (root / "six" / "model.safetensors").read_bytes() == (root / "one" / "model.safetensors").read_bytes()
    assert with_snaps["losses"] == without["losses"]
    assert not (root / "one" / "revisions").exists()
    assert sorted(p.name for p in (root / "six" / "revisions").iterdir()) == sorted(TINY_REVISIONS[:-1])


def test_each_snapshot_is_the_model_after_its_step(runs):
    """Independent check of *which* step a snapshot holds: the loss the trainer logged for batch
    k (computed with the weights after k optimizer steps) is reproduced by the snapshot saved at
    step k on the same batch, and not by the weights one step earlier or later."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, stats, _ = runs
    opts = ToyOptions.from_mapping(TINY)
    steps = stats["steps"]
    assert steps == math.ceil(8 * stats["n_params"] / (8 * 16)) == 77  # budget / tokens per step > min_steps
    batches = list(data_source(opts).batches(opts.seed)(steps, 8, 16))
    expected = {name: max(1, round(steps / 2**j)) for name, j in opts.revisions().items()}
    assert {k: v["step"] for k, v in stats["revisions"].items()} == expected
    losses = []
    for name in TINY_REVISIONS[:-1]:
        path = root / "six" / "revisions" / name
        info = json.loads((path / "snapshot.json").read_text())
        step = expected[name]
        assert info["step"] == step and info["n_tokens"] == step * 8 * 16
        assert info["budget_fraction"] == 2.0 ** -opts.revisions()[name]
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        assert len(tok) == 26 and (path / "tokenizer.json").read_bytes() == (root / "six" / "tokenizer.json").read_bytes()
        ids = torch.from_numpy(batches[step])
        with torch.no_grad():
            loss = float(model(input_ids=ids, labels=ids).loss)
        assert loss == pytest.approx(stats["losses"][step], abs=2e-5), name
        assert abs(loss - stats["losses"][step - 1]) > 1e-4 or abs(loss - stats["losses"][step + 1]) > 1e-4
        losses.append(loss)
    # training progresses: later snapshots fit the language better
    assert losses[0] > losses[-1] + 0.3
    assert stats["revisions"]["tpp8"] == {"step": steps, "n_tokens": stats["n_tokens"]}


@pytest.mark.slow
def test_provider_locates_revisions_and_completes_a_cache_built_without_them(tmp_path, monkeypatch):
    monkeypatch.setenv("KSCALE_CACHE_DIR", str(tmp_path))
    provider = PROVIDERS.get("toy")
    assert provider.revisions(TINY) == TINY_REVISIONS
    final = provider.locate("b", TINY)
    assert provider.locate("b", TINY, "tpp8") == final  # the final revision is the rung itself
    assert provider.locate("b", TINY, "tpp1") == final / "revisions" / "tpp1"
    with pytest.raises(ValueError, match="unknown toy revision 'tpp3'"):
        provider.locate("b", TINY, "tpp3")
    # a cache as the code before revisions wrote it: the final checkpoint only
    before = provider.n_trained
    old = {**TINY, "snapshots": 1}
    assert provider.ensure(["b"], old) == {"b": final}
    assert provider.n_trained == before + 1 and not (final / "revisions").exists()
    weights = (final / "model.safetensors").read_bytes()
    mtime = (final / "model.safetensors").stat().st_mtime_ns
    # asking for no revision trains nothing, asking for one retrains and adds the snapshots
    provider.ensure(["b"], TINY)
    assert provider.n_trained == before + 1
    provider.ensure(["b"], TINY, revisions=["tpp1", None])
    assert provider.n_trained == before + 2
    assert (final / "model.safetensors").stat().st_mtime_ns == mtime  # final kept as cached
    assert (final / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in (final / "revisions").iterdir()) == sorted(TINY_REVISIONS[:-1])
    assert not [p for p in final.parent.iterdir() if ".tmp-" in p.name]
    provider.ensure(["b"], TINY, revisions=TINY_REVISIONS)
    assert provider.n_trained == before + 2  # complete now
    stats = json.loads((final / "train_stats.json").read_text())
    assert provider.n_tokens("b", TINY) == stats["n_tokens"] == 77 * 8 * 16
    assert provider.n_tokens("b", TINY, "tpp1") == round(77 / 8) * 8 * 16


@pytest.mark.slow
def test_resolve_and_prepare_models_give_one_spec_per_size_and_revision():
    specs = resolve_models("toy", ["L1-d4", "L1-d8"], revisions=["tpp0.5", None, "tpp2"], provider_options=SMALL)
    assert [(s.size, s.revision) for s in specs] == [
        ("L1-d4", "tpp0.5"), ("L1-d4", None), ("L1-d4", "tpp2"),
        ("L1-d8", "tpp0.5"), ("L1-d8", None), ("L1-d8", "tpp2"),
    ]
    planned = [s.n_tokens for s in specs]  # from the schedule: nothing is trained yet
    assert not (Path(specs[1].local_path) / "train_stats.json").exists()
    prepared = prepare_models(specs, SMALL)
    assert [s.n_tokens for s in prepared] == planned  # ... and they are what training did
    for spec in prepared:
        batch = {"L1-d4": 4, "L1-d8": 8}[spec.size]
        # 48 steps (min_steps binds); tpp0.5 is a quarter of the budget: 12 steps
        step = 12 if spec.revision == "tpp0.5" else 48
        assert spec.n_tokens == step * batch * 64, spec
        lm = load_model(spec)
        assert lm.spec == spec and lm.n_params == {"L1-d4": 1028, "L1-d8": 2440}[spec.size]
    # tpp2 is the final checkpoint under its name: same folder, same weights as None
    assert prepared[1].local_path == prepared[2].local_path
    assert prepared[0].local_path.endswith("L1-d4/revisions/tpp0.5")
    a, b = (load_model(prepared[i]).model for i in (0, 1))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ModelConfigError, match=r"unknown revision 'tpp4' for family 'toy'.*Available: tpp0.5, tpp1, tpp2"):
        resolve_models("toy", ["L1-d4"], revisions=["tpp4"], provider_options=SMALL)
    with pytest.raises(ModelConfigError, match="revisions must be unique"):
        resolve_models("toy", ["L1-d4"], revisions=["tpp1", "tpp1"], provider_options=SMALL)


@pytest.mark.slow
def test_later_revisions_have_lower_held_out_loss():
    """The snapshots are genuinely earlier points of training: held-out NLL falls with tokens."""
    from kscale.toy.ladder import load_toy_corpus

    specs = prepare_models(resolve_models("toy", ["L1-d8"], revisions=["tpp0.5", "tpp1", "tpp2"],
                                          provider_options=SMALL), SMALL)
    corpus = load_toy_corpus(**SMALL, n_tokens=4096, split="test")
    nll = []
    for spec in specs:
        lm = load_model(spec)
        ids = lm.tokenizer("\n\n".join(corpus.rows), return_tensors="pt")["input_ids"][0]
        windows = ids[: len(ids) // 64 * 64].view(-1, 64)
        with torch.no_grad():
            nll.append(float(lm.model(input_ids=windows, labels=windows).loss))
    assert nll[0] > nll[1] > nll[2], nll
    assert np.isfinite(nll).all()


def test_toy_tokens_experiment_names_existing_sizes_and_revisions():
    import yaml

    from kscale.paths import PROJECT_ROOT
    from kscale.toy.ladder import LADDER

    conf = yaml.safe_load((PROJECT_ROOT / "conf" / "experiment" / "toy_tokens.yaml").read_text())
    assert conf["name"] == "toy-tokens"  # results/toy-tokens, beside results/toy-study
    assert set(conf["model"]["sizes"]) <= set(LADDER)
    # every revision of the default ladder, the final one included, fewest tokens first
    assert conf["model"]["revisions"] == list(ToyOptions().revisions())
    assert 16 in conf["bits"] and min(conf["bits"]) <= 3
