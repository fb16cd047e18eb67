"""Families, resolution errors, and tiny checkpoints loaded back through load_model."""
from __future__ import annotations

import pytest
import torch

from kscale.models import FAMILIES, ModelConfigError, get_family, load_model, resolve_models
from kscale.models.tokenizers import gpt2_tokenizer, neox_tokenizer, opt_tokenizer


def test_tokenizer_fixtures(data_dir):
    assert gpt2_tokenizer(data_dir)("Hello world")["input_ids"] == [15496, 995]
    assert neox_tokenizer(data_dir)("Hello world")["input_ids"] == [12092, 1533]
    opt = opt_tokenizer(data_dir)
    assert opt("Hello")["input_ids"] == [2, 31414]  # </s> BOS, then fairseq-remapped "Hello"
    assert len(opt) == 50265 and opt.decode([31414, 232]) == "Hello world"


def test_families_registered():
    assert {"opt", "pythia", "pythia-deduped", "gpt2", "bloom", "llama"} <= set(FAMILIES.names())
    assert list(get_family("opt").sizes)[:2] == ["125m", "350m"]
    assert get_family("opt").sizes["1.3b"] == "facebook/opt-1.3b"


def test_tiny_gpt2_shared_checkpoint(data_dir):
    path = data_dir / "models" / "tiny-gpt2"
    (spec,) = resolve_models("gpt2", ["small"], local_paths={"small": path})
    lm = load_model(spec)
    assert lm.n_params == sum(p.numel() for p in lm.model.parameters())
    assert lm.n_params == 50257 * 2 + 1024 * 2 + 2 * (2 * 2 * 3 + 2 * 3 + 2 * 2 + 2 + 2 * 8 + 8 + 8 * 2 + 2 + 4 * 2) + 2 * 2
    assert not lm.model.training
    names = [n for n, m in lm.model.named_modules() if type(m).__name__ == "Conv1D"
             and get_family("gpt2").module_filter.matches(n)]
    assert len(names) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block


def _tiny(kind, vocab):
    from transformers import BloomConfig, GPTNeoXConfig, LlamaConfig, OPTConfig

    if kind == "opt":
        return OPTConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                         max_position_embeddings=64, word_embed_proj_dim=16), 6
    if kind == "pythia":
        return GPTNeoXConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=64), 4
    if kind == "bloom":
        return BloomConfig(vocab_size=vocab, hidden_size=16, n_layer=2, n_head=2), 4
    return LlamaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, intermediate_size=32, max_position_embeddings=64), 7


@pytest.mark.parametrize("family", ["opt", "pythia", "bloom", "llama"])
def test_tiny_models_roundtrip(family, tmp_path, data_dir):
    from transformers import AutoModelForCausalLM

    tok = {"opt": opt_tokenizer, "pythia": neox_tokenizer}.get(family, gpt2_tokenizer)(data_dir)
    cfg, per_block = _tiny(family, len(tok) + 8)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    size = next(iter(get_family(family).sizes))
    folder = tmp_path / size  # local_dir layout: one sub-folder per size label
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    (spec,) = resolve_models(family, [size], local_dir=tmp_path)
    lm = load_model(spec)
    assert lm.n_params == sum(p.numel() for p in model.parameters())
    x = torch.tensor([lm.tokenizer("Hello world")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x).logits, model(x).logits)
    fam = get_family(family)
    linears = [n for n, m in lm.model.named_modules() if isinstance(m, torch.nn.Linear) and fam.module_filter.matches(n)]
    assert len(linears) == 2 * per_block  # block linears only; lm_head / embeddings excluded
    for producer, consumer in fam.outlier_pairs:
        from fnmatch import fnmatchcase

        assert sum(fnmatchcase(n, producer) for n in linears) == 2
        assert sum(fnmatchcase(n, consumer) for n in linears) == 2


def test_resolution_errors(tmp_path):
    with pytest.raises(ModelConfigError, match="unknown size '125M'.*Did you mean"):
        resolve_models("opt", ["125M"])
    with pytest.raises(ModelConfigError, match="Did you mean 'opt'"):
        resolve_models("otp")
    with pytest.raises(ModelConfigError, match=r"looked for .*opt-125m"):
        resolve_models("opt", ["125m"], local_dir=tmp_path)
    with pytest.raises(ModelConfigError, match="does not exist"):
        resolve_models("opt", ["125m"], local_paths={"125m": tmp_path / "nope"})
    with pytest.raises(ModelConfigError, match="hub is disabled"):  # conftest: HF_HUB_OFFLINE=1
        resolve_models("opt", ["125m"])
    with pytest.raises(ModelConfigError, match="dtype must be one of"):
        resolve_models("opt", ["125m"], dtype="fp8")


def test_unreachable_hub_fails_fast_with_a_clear_error(monkeypatch):
    """No network (and no offline flag): one connect attempt, then an error naming the id and
    the endpoint, instead of minutes of retries inside a job."""
    import socket

    from kscale import net

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.invalid")
    attempts = []

    def refuse(address, timeout=None):
        attempts.append((address, timeout))
        raise OSError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    net.hub_unreachable_reason.cache_clear()
    try:
        with pytest.raises(ModelConfigError, match=r"facebook/opt-125m.*hub.example.invalid is unreachable"):
            resolve_models("opt", ["125m", "350m"])
    finally:
        net.hub_unreachable_reason.cache_clear()
    assert attempts == [(("hub.example.invalid", 443), 3)]  # probed once, with a short timeout
