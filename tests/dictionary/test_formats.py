"""SAELens round trips against the real sae_lens package; circuit-tracer and sparsify layouts; bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from circuitbook.dictionary import Dictionary, DictionaryConfig, DictionaryError
from circuitbook.dictionary.formats import load_circuit_tracer, load_dictionary, load_saelens, load_sparsify, save_saelens

sae_lens = pytest.importorskip("sae_lens")
D, S = 24, 40


def _random(kind, act, seed=0, k=5):
    g = torch.Generator().manual_seed(seed)
    cfg = DictionaryConfig(kind, 0, D, S, act, k=k if act == "topk" else None)
    t = {"W_enc": torch.randn(D, S, generator=g), "b_enc": torch.randn(S, generator=g) * 0.3,
         "W_dec": torch.randn(S, D, generator=g), "b_dec": torch.randn(D, generator=g)}
    if cfg.skip:
        t["W_skip"] = torch.randn(D, D, generator=g) * 0.1
    if act == "jumprelu":
        t["threshold"] = torch.rand(S, generator=g) * 0.5
    return Dictionary.from_tensors(cfg, t)


def _x(n=50, seed=1):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 2


CASES = [("sae", "relu"), ("sae", "topk"), ("sae", "jumprelu"), ("transcoder", "relu"), ("transcoder", "topk"),
         ("transcoder", "jumprelu"), ("skip-transcoder", "relu"), ("skip-transcoder", "jumprelu")]


@pytest.mark.parametrize("kind,act", CASES)
def test_saved_files_load_in_sae_lens_with_the_same_function(tmp_path, kind, act):
    d = _random(kind, act)
    save_saelens(d, tmp_path / "d", model_name="test")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "d"))
    x = _x()
    with torch.no_grad():
        f_ours, f_theirs = d.encode(x), theirs.encode(x)
        assert torch.allclose(f_ours, f_theirs, atol=1e-5)
        assert (f_ours > 0).sum() > 0
        y_theirs = theirs(x)  # forward = decode(encode) (+ skip)
        assert torch.allclose(d(x), y_theirs, atol=1e-5)
    arch = json.loads((tmp_path / "d" / "cfg.json").read_text())["architecture"]
    assert arch == theirs.cfg.architecture()
    back = load_saelens(tmp_path / "d")
    assert back.cfg == d.cfg and torch.allclose(back(x), d(x), atol=1e-6)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "transcoder", "skip_transcoder",
                                  "jumprelu_transcoder"])
def test_files_saved_by_sae_lens_load_here(tmp_path, arch):
    cls, cfg_cls = sae_lens.registry.get_sae_class(arch)
    kw = {"d_in": D, "d_sae": S}
    if "transcoder" in arch:
        kw.update(d_out=D, apply_b_dec_to_input=False)
    if arch == "topk":
        kw["k"] = 6
    sae = cls(cfg_cls(**kw))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.05 if name in ("threshold", "W_skip") else 0.2))
            if name == "threshold":
                p.abs_()
    sae.cfg.metadata.hook_name = "blocks.0.hook_mlp_out"
    sae.save_model(str(tmp_path / "s"))
    ours = load_saelens(tmp_path / "s")
    x = _x(seed=4)
    with torch.no_grad():
        assert torch.allclose(ours.encode(x), sae.encode(x), atol=1e-5)
        assert torch.allclose(ours(x), sae(x), atol=1e-5)


def test_circuit_tracer_layout_is_transposed_and_applied(tmp_path):
    g = torch.Generator().manual_seed(5)
    W_enc, W_dec = torch.randn(S, D, generator=g), torch.randn(S, D, generator=g)
    b_enc, b_dec, W_skip = torch.randn(S, generator=g), torch.randn(D, generator=g), torch.randn(D, D, generator=g)
    thr = torch.rand(S, generator=g)
    save_file({"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec, "W_skip": W_skip,
               "activation_function.threshold": thr}, str(tmp_path / "layer_0.safetensors"))
    d = load_circuit_tracer(tmp_path / "layer_0.safetensors", layer=0)
    x = _x(seed=6)
    pre = torch.nn.functional.linear(x, W_enc, b_enc)  # circuit-tracer's encode
    acts = pre * (pre > thr)
    want = acts @ W_dec + b_dec + x @ W_skip.T
    assert d.cfg.kind == "skip-transcoder" and d.cfg.activation == "jumprelu"
    assert torch.allclose(d.encode(x), acts, atol=1e-5) and torch.allclose(d(x), want, atol=1e-4)


@pytest.mark.parametrize("transcode", [False, True])
def test_sparsify_layout(tmp_path, transcode):
    g = torch.Generator().manual_seed(7)
    enc_w, enc_b = torch.randn(S, D, generator=g), torch.randn(S, generator=g)
    W_dec, b_dec = torch.randn(S, D, generator=g), torch.randn(D, generator=g)
    (tmp_path / "cfg.json").write_text(json.dumps({"activation": "topk", "k": 4, "num_latents": S, "d_in": D,
                                                   "transcode": transcode, "skip_connection": False}))
    save_file({"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": W_dec, "b_dec": b_dec},
              str(tmp_path / "sae.safetensors"))
    d = load_sparsify(tmp_path, layer=0)
    x = _x(seed=8)
    xin = x if transcode else x - b_dec
    pre = torch.relu(xin @ enc_w.T + enc_b)  # sparsify: ReLU, then the top k
    v, i = pre.topk(4)
    want = torch.zeros(len(x), S).scatter_(-1, i, v)
    assert torch.allclose(d.encode(x), want, atol=1e-5)
    assert torch.allclose(d(x), want @ W_dec + b_dec, atol=1e-4)
    assert d.cfg.kind == ("transcoder" if transcode else "sae")


def test_bad_files_raise_one_clear_error(tmp_path):
    d = _random("sae", "relu")
    save_saelens(d, tmp_path / "ok")
    # truncated weights
    raw = (tmp_path / "ok" / "sae_weights.safetensors").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "cfg.json").write_text((tmp_path / "ok" / "cfg.json").read_text())
    (tmp_path / "cut" / "sae_weights.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DictionaryError, match="truncated or corrupt"):
        load_saelens(tmp_path / "cut")
    # unknown architecture
    cfg = json.loads((tmp_path / "ok" / "cfg.json").read_text())
    cfg["architecture"] = "wavelet"
    (tmp_path / "ok" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(DictionaryError, match="unknown or unsupported architecture 'wavelet'"):
        load_saelens(tmp_path / "ok")
    with pytest.raises(DictionaryError, match="unknown dictionary format"):
        load_dictionary(tmp_path / "ok", "onnx", 0)
    # a TopK skip-transcoder has no SAELens architecture
    with pytest.raises(DictionaryError, match="no architecture"):
        save_saelens(_random("skip-transcoder", "topk"), tmp_path / "no")
    assert not (tmp_path / "no").exists()
