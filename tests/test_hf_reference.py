"""fpt_ref.forward against Hugging Face transformers: tiny random models, logits in float64.

Tiny ``LlamaForCausalLM`` (grouped-query attention, tied and untied output),
``Qwen2ForCausalLM`` (q/k/v biases, multi-query attention) and ``GPT2LMHeadModel`` (tied,
LayerNorm, tanh-GELU, learned positions) are built in float64 with eager attention, every
parameter drawn at random, and copied into an :class:`fpt_ref.Model` of the matching
:class:`fpt_ref.blocks.Arch` (docs/spec.md section 4.1) by the mapping below. Their logits
on the same token ids are compared with ``fpt_ref.forward``.

**Mapping** (row vectors: fpt-ref weights are ``[in, out]``). ``nn.Linear.weight`` is
``[out, in]``, so ``W = weight.T``; GPT-2's ``Conv1D.weight`` is already ``[in, out]``.
Query head ``e`` takes columns ``e d .. (e + 1) d`` of ``W_Q`` (and of ``b_q``), its
``W_O`` the same rows of ``o_proj.weight.T`` (``c_proj.weight``); key/value head ``g`` the
columns ``g d .. (g + 1) d`` of ``W_K``, ``W_V``, stored with query head ``g E / G`` (HF's
``repeat_kv``: query head ``j`` reads key/value head ``floor(j / (E / G))``, as the spec).
GPT-2's fused ``c_attn`` is ``[W_Q | W_K | W_V]`` along its output axis. Llama and Qwen2:
``gate_proj -> W_gate``, ``up_proj -> W_l1``, ``down_proj -> W_l2``, ``model.norm`` the
final norm, RoPE ``half`` (``rotate_half``) with ``rope_theta``, ``rms_norm_eps``. GPT-2:
``ln_1``, ``ln_2``, ``ln_f`` are LayerNorms (gain and bias) with ``layer_norm_epsilon``,
``c_fc -> W_l1``, ``mlp.c_proj -> W_l2``, ``attn.c_proj`` bias ``b_o``, ``gelu_new`` is
``gelu_tanh``, ``wpe`` the positions, ``lm_head`` tied to ``wte``. HF's causal mask is
``causal=True``.

**Agreement** (transformers 5.24, torch 2.13 CPU; the models below, token ids of seeds 0
and 1; ``S`` the natural output scale of :func:`naive.naive_scale`, ``u32 = 2^-24``):

- GPT-2: transformers computes everything in float64. Measured ``|Δ| = 7.1e-15``
  (relative to ``max |logits|`` ``4.5e-16``, 4 ulps of ``max |logits|``, 0.12 .. 0.25 ulp
  of ``S``). Bound: the float64 bound of ``tests/test_forward_arch.py``
  (:func:`test_forward_arch.tol_ulps` ulps of ``S``, here ``3e-11 .. 5e-11``).
- Llama and Qwen2 as shipped: a float64 model still rounds to float32 in three places.
  ``LlamaRMSNorm`` casts the stream to float32 and takes its mean square, ``rsqrt`` and
  product there. ``eager_attention_forward`` runs ``softmax(..., dtype=torch.float32)``.
  The rotary embedding computes ``inv_freq = 1 / theta^(2i/d)`` in float32, and also the
  angles ``m inv_freq`` and their ``cos``/``sin``. Measured ``|Δ| = 5.4e-7 .. 3.0e-6``:
  relative to ``max |logits|`` it is ``1.3e-7 .. 1.8e-7``, or ``0.27 .. 0.41 u32 S``.
  Attribution, as relative differences for the three models with one or more steps lifted
  to float64: norm alone ``3.6e-8 .. 4.8e-8``, softmax alone ``1.0e-7 .. 1.7e-7``, RoPE
  alone ``1.7e-7 .. 2.5e-7``, norm and softmax ``1.4e-8 .. 2.0e-8``, all three
  ``4.6e-16 .. 5.2e-16``. Bound: these roundings are a subset of those of a float32
  implementation. So the agreement policy's float32 bound applies (docs/tolerance.md):
  ``L (u32 + u64) S``, with ``L`` the output's path length
  (:func:`fpt_ref.tolerance.path_lengths`) plus the blocks of section 4.1 as in
  :func:`test_forward_arch.tol_ulps`. Add ``2 s`` per layer for the RoPE angles: a float32
  angle ``m inv_freq`` is off by up to ``2 u32 m`` radians. Here that is
  ``7e-4 .. 3.5e-3``, about ``2e-4`` relative.
- Llama and Qwen2 with those three steps in float64: ``LlamaRMSNorm.forward``, the rotary
  embedding's ``forward`` and ``eager_attention_forward`` are monkeypatched with float64
  copies of themselves. Measured ``|Δ| = 2.3e-15 .. 8.9e-15`` (relative ``3.9e-16 ..
  7.1e-16``, 2.5 .. 5.7 ulps of ``max |logits|``, 0.22 .. 0.69 ulp of ``S``). Bound: the
  float64 bound, as for GPT-2. This comparison catches what the float32 bound cannot, such
  as ``eps`` outside the square root.

Neither comparison finds a disagreement that is a bug in fpt_ref. Each check that the
mapping matters (the other RoPE layout, the group mapping ``j mod G``, erf-GELU for
``gelu_new``, eps dropped) misses the float64 bound by three orders of magnitude or more.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from naive import naive_scale
from test_forward_arch import EXTRA_LAYER, tol_ulps

import fpt_ref
from fpt_ref import Head, Layer, Model
from fpt_ref.blocks import PRESETS
from fpt_ref.tolerance import path_lengths, ulp, unit_roundoff

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers.models.llama import modeling_llama  # noqa: E402
from transformers.models.qwen2 import modeling_qwen2  # noqa: E402

V, H, P, S_MAX, SEQ = 40, 16, 24, 16, 12


# ---- random tiny models --------------------------------------------------------------------------


def _randomise(model, seed: int):
    """Every parameter drawn in place: norm gains ``1 + N(0, 0.1^2)``, other vectors ``N(0, 0.1^2)``, token
    embeddings ``N(0, 1)``, positions ``N(0, 0.1^2)``, matrices ``N(0, 1/fan_in)``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if p.ndim == 1:
                is_gain = name.endswith("weight") and ("norm" in name or ".ln_" in name)
                p.copy_(1 + 0.1 * z if is_gain else 0.1 * z)
            elif "embed_tokens" in name or "wte" in name:
                p.copy_(z)
            elif "wpe" in name:
                p.copy_(0.1 * z)
            else:
                fan_in = p.shape[0] if ".c_" in name else p.shape[1]  # GPT-2 Conv1D [in, out]; nn.Linear [out, in]
                p.copy_(z / math.sqrt(fan_in))
    return model.eval()


def hf_llama(tied: bool, kv_heads: int = 2, seed: int = 0, theta: float = 500.0):
    cfg = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=H,
        intermediate_size=P,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        head_dim=4,
        max_position_embeddings=S_MAX,
        rms_norm_eps=1e-5,
        rope_theta=theta,
        tie_word_embeddings=tied,
        attn_implementation="eager",
    )
    return _randomise(transformers.LlamaForCausalLM(cfg).double(), seed)


def hf_qwen2(kv_heads: int = 1, seed: int = 1):
    cfg = transformers.Qwen2Config(
        vocab_size=V,
        hidden_size=H,
        intermediate_size=P,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=S_MAX,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    return _randomise(transformers.Qwen2ForCausalLM(cfg).double(), seed)


def hf_gpt2(seed: int = 2):
    cfg = transformers.GPT2Config(
        vocab_size=V,
        n_embd=H,
        n_layer=2,
        n_head=4,
        n_positions=S_MAX,
        n_inner=P,
        layer_norm_epsilon=1e-5,
        activation_function="gelu_new",
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    hf = _randomise(transformers.GPT2LMHeadModel(cfg).double(), seed)
    assert hf.lm_head.weight is hf.transformer.wte.weight  # tied
    return hf


# ---- the mapping -----------------------------------------------------------------------------------


def _np(t):
    return t.detach().numpy().copy()


def from_llama(hf, arch_name: str, group=None, **arch_changes) -> Model:
    """The fpt-ref model of a ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` (``arch_name``: "llama" or "qwen2").

    ``group`` (``(j, E, G) -> g``) replaces HF's mapping of query heads to key/value heads: the tests use it to
    show that a wrong mapping is caught. ``arch_changes`` go into the ``Arch``.
    """
    cfg = hf.config
    E, G = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // E
    r = E // G
    kv_of = (lambda j, E, G: j // (E // G)) if group is None else group
    arch = PRESETS[arch_name].replace(
        tied=bool(cfg.tie_word_embeddings), rope_theta=float(cfg.rope_parameters["rope_theta"]), **arch_changes
    )
    layers = []
    for L in hf.model.layers:
        a = L.self_attn
        kv = []
        for g in range(G):
            cols = slice(g * d, (g + 1) * d)
            t = dict(w_k=_np(a.k_proj.weight[cols].T), w_v=_np(a.v_proj.weight[cols].T))  # [h, d] each
            if arch.qkv_bias:
                t.update(b_k=_np(a.k_proj.bias[cols]), b_v=_np(a.v_proj.bias[cols]))
            kv.append(t)
        heads = []
        for e in range(E):
            cols = slice(e * d, (e + 1) * d)
            b_q = _np(a.q_proj.bias[cols]) if arch.qkv_bias else None
            w_q, w_o = _np(a.q_proj.weight[cols].T), _np(a.o_proj.weight[:, cols].T)  # [h, d], [d, h]
            heads.append((w_q, w_o, b_q, kv_of(e, E, G)))
        # the file's order: head e reads the key/value head its position says (e // r); a wrong mapping is
        # expressed by placing the query heads so that the spec's mapping reads the wrong key/value head
        slots = [[] for _ in range(G)]
        for w_q, w_o, b_q, g in heads:
            slots[g].append(Head(w_q=w_q, w_o=w_o, b_q=b_q, **kv[g]))
        if any(len(s) != r for s in slots):
            raise ValueError("group: every key/value head must be read by E / G query heads")
        layers.append(
            Layer(
                norm_mha=_np(L.input_layernorm.weight),
                heads=tuple(h for s in slots for h in s),
                norm_mlp=_np(L.post_attention_layernorm.weight),
                w_l1=_np(L.mlp.up_proj.weight.T),  # [h, p]
                b_l1=None,
                w_l2=_np(L.mlp.down_proj.weight.T),  # [p, h]
                b_l2=None,
                w_gate=_np(L.mlp.gate_proj.weight.T),  # [h, p]
                kv_heads=G,
            )
        )
    return Model(
        embed=_np(hf.model.embed_tokens.weight),
        pos=None,
        w_out=None if arch.tied else _np(hf.lm_head.weight.T),
        layers=tuple(layers),
        norm_eps=float(cfg.rms_norm_eps),
        causal=True,
        arch=arch,
        final_norm=_np(hf.model.norm.weight),
        max_seq=int(cfg.max_position_embeddings),
    )


def from_gpt2(hf, **arch_changes) -> Model:
    """The fpt-ref model of a ``GPT2LMHeadModel`` (Conv1D weights are ``[in, out]``; ``c_attn`` is ``[W_Q|W_K|W_V]``)."""
    cfg = hf.config
    h, E = cfg.n_embd, cfg.n_head
    d = h // E
    layers = []
    for B in hf.transformer.h:
        W, b = _np(B.attn.c_attn.weight), _np(B.attn.c_attn.bias)  # [h, 3h], [3h]
        W_O = _np(B.attn.c_proj.weight)  # [h (heads' values), h]
        heads = []
        for e in range(E):
            q, k, v = (slice(part * h + e * d, part * h + (e + 1) * d) for part in range(3))
            heads.append(
                Head(w_q=W[:, q], w_k=W[:, k], w_v=W[:, v], w_o=W_O[e * d : (e + 1) * d], b_q=b[q], b_k=b[k], b_v=b[v])
            )
        layers.append(
            Layer(
                norm_mha=_np(B.ln_1.weight),
                norm_mha_b=_np(B.ln_1.bias),
                heads=tuple(heads),
                b_o=_np(B.attn.c_proj.bias),
                norm_mlp=_np(B.ln_2.weight),
                norm_mlp_b=_np(B.ln_2.bias),
                w_l1=_np(B.mlp.c_fc.weight),  # [h, p]
                b_l1=_np(B.mlp.c_fc.bias),
                w_l2=_np(B.mlp.c_proj.weight),  # [p, h]
                b_l2=_np(B.mlp.c_proj.bias),
            )
        )
    return Model(
        embed=_np(hf.transformer.wte.weight),
        pos=_np(hf.transformer.wpe.weight),
        w_out=None,
        layers=tuple(layers),
        norm_eps=float(cfg.layer_norm_epsilon),
        causal=True,
        arch=PRESETS["gpt2"].replace(**arch_changes),
        final_norm=_np(hf.transformer.ln_f.weight),
        final_norm_b=_np(hf.transformer.ln_f.bias),
    )


# ---- float64 copies of transformers' float32 steps -------------------------------------------------


def _rms_norm_f64(self, hidden_states):
    """``LlamaRMSNorm.forward`` / ``Qwen2RMSNorm.forward`` without the cast to float32."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def _rotary_f64(self, x, position_ids):
    """The default rotary embedding's ``forward`` with ``inv_freq``, the angles and cos/sin in float64."""
    dim = 2 * self.inv_freq.shape[-1]
    base = float(self.config.rope_parameters["rope_theta"])
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = position_ids[..., None].to(torch.float64) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _eager_f64(module_of):
    """``eager_attention_forward`` with the softmax in the inputs' dtype (not float32)."""

    def eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        key = module_of.repeat_kv(key, module.num_key_value_groups)
        value = module_of.repeat_kv(value, module.num_key_value_groups)
        w = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            w = w + attention_mask
        w = torch.nn.functional.softmax(w, dim=-1)
        return torch.matmul(w, value).transpose(1, 2).contiguous(), w

    return eager


@pytest.fixture
def float64_throughout(monkeypatch):
    """Llama's and Qwen2's float32 steps (RMSNorm, RoPE tables, softmax) in float64 for the test's duration."""
    for mod, prefix in ((modeling_llama, "Llama"), (modeling_qwen2, "Qwen2")):
        monkeypatch.setattr(getattr(mod, f"{prefix}RMSNorm"), "forward", _rms_norm_f64)
        monkeypatch.setattr(getattr(mod, f"{prefix}RotaryEmbedding"), "forward", _rotary_f64)
        monkeypatch.setattr(mod, "eager_attention_forward", _eager_f64(mod))


# ---- comparisons -----------------------------------------------------------------------------------


def tokens(seed: int = 0, batch: int = 3, seq: int = SEQ):
    return np.random.default_rng(seed).integers(0, V, size=(batch, seq))


def hf_logits(hf, x):
    with torch.no_grad():
        out = hf(torch.tensor(x)).logits.numpy()
    assert out.dtype == np.float64
    return out


def float64_bound(m: Model, x) -> float:
    """``tol_ulps`` ulps of the natural output scale (tests/test_forward_arch.py)."""
    return tol_ulps(m, x.shape[-1]) * ulp(naive_scale(m, x), np.float64)


def float32_bound(m: Model, x) -> float:
    """The agreement policy's float32 bound ``L (u32 + u64) S`` (see the module docstring)."""
    s = x.shape[-1]
    L = path_lengths(m, s)["output"] + m.N * (EXTRA_LAYER + 2 * s)  # + the RoPE angles' m u32 per layer
    if m.final_norm is not None:
        L += m.h + 6
    return L * (unit_roundoff(np.float32) + unit_roundoff(np.float64)) * naive_scale(m, x)


def _err(a, b) -> float:
    return float(np.max(np.abs(a - b)))


CASES = {
    "llama_gqa_untied": lambda: (hf_llama(tied=False), "llama"),
    "llama_gqa_tied": lambda: (hf_llama(tied=True, seed=3), "llama"),
    "qwen2_mqa": lambda: (hf_qwen2(), "qwen2"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_llama_and_qwen2_as_shipped_agree_to_float32_precision(case):
    hf, arch = CASES[case]()
    m = from_llama(hf, arch)
    x = tokens()
    assert _err(fpt_ref.forward(m, x), hf_logits(hf, x)) <= float32_bound(m, x)


@pytest.mark.parametrize("case", list(CASES))
def test_llama_and_qwen2_in_float64_throughout_agree_to_a_few_ulps(case, float64_throughout):
    hf, arch = CASES[case]()
    m = from_llama(hf, arch)
    x = tokens(seed=1)
    ref = hf_logits(hf, x)
    bound = float64_bound(m, x)
    assert _err(fpt_ref.forward(m, x), ref) <= bound
    # the mapping matters: the other RoPE layout and the group mapping j mod G miss by far
    assert _err(fpt_ref.forward(from_llama(hf, arch, rope_layout="interleaved"), x), ref) > 1e3 * bound
    if 1 < m.layers[0].G < m.layers[0].E:
        assert _err(fpt_ref.forward(from_llama(hf, arch, group=lambda j, E, G: j % G), x), ref) > 1e3 * bound
    # and so does eps (1e-5 or 1e-6 against a mean square near 1)
    assert _err(fpt_ref.forward(m.replace(norm_eps=0.0), x), ref) > 1e3 * bound


def test_gpt2_agrees_to_a_few_ulps():
    hf = hf_gpt2()
    m = from_gpt2(hf)
    for seed, seq in ((0, SEQ), (1, S_MAX)):
        x = tokens(seed, seq=seq)
        ref = hf_logits(hf, x)
        bound = float64_bound(m, x)
        assert _err(fpt_ref.forward(m, x), ref) <= bound
    # erf-GELU for gelu_new, and no eps, miss by far
    assert _err(fpt_ref.forward(from_gpt2(hf, act="gelu"), x), ref) > 1e3 * bound
    assert _err(fpt_ref.forward(m.replace(norm_eps=0.0), x), ref) > 1e3 * bound


def test_a_mapping_error_breaks_even_the_float32_bound():
    """The shipped Llama's float32 bound is loose (about 1e-4 relative), yet the other RoPE layout misses it."""
    hf = hf_llama(tied=False)
    m = from_llama(hf, "llama")
    x = tokens()
    ref = hf_logits(hf, x)
    assert _err(fpt_ref.forward(m, x), ref) <= float32_bound(m, x)
    assert _err(fpt_ref.forward(from_llama(hf, "llama", rope_layout="interleaved"), x), ref) > float32_bound(m, x)
