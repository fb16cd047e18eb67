"""Checkpoints over training as a model axis (issue 11 §1): Pythia's step<N> revisions from local
folders saved with save_pretrained, token counts, and the errors raised before any load."""
from __future__ import annotations

import pytest
import torch

from kscale.models import ModelConfigError, get_family, load_model, resolve_models
from kscale.toy.tokenizer import build_tokenizer

# Pythia (Biderman et al. 2023): 1024 sequences x 2048 tokens per step, 143,000 steps (~300B tokens)
PYTHIA_TOKENS_PER_STEP = 2_097_152


def _tokenizer():
    return build_tokenizer([f"w{i}" for i in range(10)])


def _save_tiny_neox(folder, tok, seed: int):
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    cfg = GPTNeoXConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def pythia_dir(tmp_path_factory):
    """``<root>/70m/<revision>/`` for three revisions, each with different weights (a tiny
    GPT-NeoX with a 12-word tokenizer: what matters here is where each revision is found)."""
    root = tmp_path_factory.mktemp("pythia-revisions")
    tok = _tokenizer()
    models = {rev: _save_tiny_neox(root / "70m" / rev, tok, seed)
              for seed, rev in enumerate(["step1000", "step8000", "step143000"])}
    return root, models


def test_pythia_family_knows_its_published_checkpoints():
    for name in ("pythia", "pythia-deduped"):
        fam = get_family(name)
        assert fam.tokens_per_step == 1024 * 2048 == PYTHIA_TOKENS_PER_STEP
        assert len(fam.revisions) == 154  # step0, 10 log-spaced (1..512), 143 every 1000 steps
        assert fam.revisions[:3] == ("step0", "step1", "step2") and fam.revisions[10] == "step512"
        assert fam.revisions[11] == "step1000" and fam.revisions[-1] == "step143000"
        assert fam.revision_tokens("step8000") == 16_777_216_000
        assert fam.revision_tokens(None) == 299_892_736_000  # main = step143000, the "300B tokens"
        assert fam.revision_tokens("main") is None
    assert get_family("opt").revision_tokens("step1000") is None  # no rule: unknown


def test_pythia_revisions_from_local_folders_load_with_their_token_counts(pythia_dir):
    root, models = pythia_dir
    revs = ["step1000", "step8000", "step143000"]
    specs = resolve_models("pythia", ["70m"], local_dir=root, revisions=revs, dtype="float32")
    assert [(s.size, s.revision) for s in specs] == [("70m", r) for r in revs]
    assert [s.local_path for s in specs] == [str(root / "70m" / r) for r in revs]
    assert [s.n_tokens for s in specs] == [2_097_152_000, 16_777_216_000, 299_892_736_000]
    x = torch.tensor([[1, 5, 3, 9]])
    for spec, rev in zip(specs, revs):
        lm = load_model(spec)
        with torch.no_grad():
            torch.testing.assert_close(lm.model(x).logits, models[rev](x).logits)
    # the three revisions really are different checkpoints
    a, b = (load_model(s).model for s in specs[:2])
    with torch.no_grad():
        assert not torch.allclose(a(x).logits, b(x).logits)


def test_local_paths_per_size_folder_or_per_revision_mapping(pythia_dir):
    root, _ = pythia_dir
    (spec,) = resolve_models("pythia", ["70m"], local_paths={"70m": root / "70m"}, revisions=["step8000"])
    assert spec.local_path == str(root / "70m" / "step8000") and spec.n_tokens == 8000 * PYTHIA_TOKENS_PER_STEP
    mapping = {"70m": {"step1000": str(root / "70m" / "step1000"), "null": str(root / "70m" / "step143000")}}
    specs = resolve_models("pythia", ["70m"], local_paths=mapping, revisions=["step1000", None])
    assert [s.local_path for s in specs] == [mapping["70m"]["step1000"], mapping["70m"]["null"]]
    assert [s.n_tokens for s in specs] == [1000 * PYTHIA_TOKENS_PER_STEP, 143_000 * PYTHIA_TOKENS_PER_STEP]
    with pytest.raises(ModelConfigError, match=r"local_paths.70m maps revisions \['null', 'step1000'\], not 'step8000'"):
        resolve_models("pythia", ["70m"], local_paths=mapping, revisions=["step8000"])
    # a single revision (the pre-existing `revision` key) works the same way
    (one,) = resolve_models("pythia", ["70m"], local_dir=root, revision="step1000")
    assert one.revision == "step1000" and one.local_path == str(root / "70m" / "step1000")


def test_explicit_revision_tokens_for_any_family(pythia_dir, tmp_path):
    root, _ = pythia_dir
    # a name that is not a Pythia step needs its count; with it, it loads like any revision
    (root / "70m" / "main").symlink_to(root / "70m" / "step143000")
    (spec,) = resolve_models("pythia", ["70m"], local_dir=root, revisions=["main"],
                             revision_tokens={"main": 299_892_736_000})
    assert spec.n_tokens == 299_892_736_000 and spec.revision == "main"
    # an explicit count also overrides the step rule
    (spec,) = resolve_models("pythia", ["70m"], local_dir=root, revisions=["step1000"], revision_tokens={"step1000": 7})
    assert spec.n_tokens == 7
    # a family without a rule: any revision name, tokens unknown unless given
    _save_tiny_neox(tmp_path / "1b" / "ckpt-a", _tokenizer(), 3)
    specs = resolve_models("llama", ["1b"], local_dir=tmp_path, revisions=["ckpt-a"])
    assert specs[0].n_tokens is None and specs[0].revision == "ckpt-a"
    specs = resolve_models("llama", ["1b"], local_dir=tmp_path, revisions=["ckpt-a"], revision_tokens={"ckpt-a": 10**9})
    assert specs[0].n_tokens == 10**9


def test_revision_errors_are_raised_before_any_load(pythia_dir):
    root, _ = pythia_dir
    with pytest.raises(ModelConfigError, match="publishes no revision 'step1500'.*step0, step1, step2"):
        resolve_models("pythia", ["70m"], local_dir=root, revisions=["step1500"])
    with pytest.raises(ModelConfigError, match=r"revision 'main' must look like step<N>.*revision_tokens"):
        resolve_models("pythia-deduped", ["70m"], local_dir=root, revisions=["main"])
    with pytest.raises(ModelConfigError, match=r"revision 'step512'.*looked for .*70m/step512, .*70m/revisions/step512"):
        resolve_models("pythia", ["70m"], local_dir=root, revisions=["step512"])
    with pytest.raises(ModelConfigError, match="give revision or revisions, not both"):
        resolve_models("pythia", ["70m"], local_dir=root, revision="step1000", revisions=["step8000"])
    with pytest.raises(ModelConfigError, match="revisions must be unique"):
        resolve_models("pythia", ["70m"], local_dir=root, revisions=["step1000", "step1000"])
    with pytest.raises(ModelConfigError, match="revisions is empty"):
        resolve_models("pythia", ["70m"], local_dir=root, revisions=[])
    with pytest.raises(ModelConfigError, match=r"revision_tokens.step1000 must be an integer >= 0"):
        resolve_models("pythia", ["70m"], local_dir=root, revisions=["step1000"], revision_tokens={"step1000": -1})
    # from the hub (disabled in tests): the error names the revision
    with pytest.raises(ModelConfigError, match=r"EleutherAI/pythia-70m' at revision 'step1000'.*hub is disabled"):
        resolve_models("pythia", ["70m"], revisions=["step1000"])


def test_default_rows_are_unchanged_without_revisions(pythia_dir):
    root, _ = pythia_dir
    (spec,) = resolve_models("pythia", ["70m"], local_paths={"70m": root / "70m" / "step143000"})
    assert spec.revision is None and spec.n_tokens == 143_000 * PYTHIA_TOKENS_PER_STEP
    (spec,) = resolve_models("gpt2", ["small"], local_paths={"small": root / "70m" / "step1000"})
    assert spec.revision is None and spec.n_tokens is None
