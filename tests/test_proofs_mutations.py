"""Mutation suite: every deliberate bug in the model, the expansions, the stand-ins or the glue is caught.

Each mutation is applied in-process (``monkeypatch``) to one piece of :mod:`proofs`; the claim
it affects must then come out "refuted" or "not proved", never "proved". The unmutated
verdicts are checked first, so no test passes because its claim was never provable.
"""

from __future__ import annotations

import types

import pytest
import sympy as sp
from fpt_ref.proofs import chains as CH
from fpt_ref.proofs import core as C
from fpt_ref.proofs import expand as X
from fpt_ref.proofs import symbolic as S
from fpt_ref.proofs.crosscheck import crosscheck_theorem
from fpt_ref.proofs.theorems import THEOREMS, decide, default_sizes, entry_claim, run_blocks

NOT_PROVED = ("refuted", "not proved")


def _sp_with(**over):
    """A stand-in for the ``sympy`` module with some functions replaced."""
    ns = types.SimpleNamespace(**{n: getattr(sp, n) for n in dir(sp) if not n.startswith("_")})
    for k, v in over.items():
        setattr(ns, k, v)
    return ns


def symbolic(theorem, zero=None, scale=None) -> str:
    """The symbolic-size verdict alone (for mutations of the rules and the glue)."""
    z, sc = THEOREMS[theorem].paper
    return run_blocks(theorem, z if zero is None else zero, sc if scale is None else scale).status


def _all_fail(verdicts: dict, keys=None):
    keys = keys or list(verdicts)
    return all(verdicts[k] in NOT_PROVED for k in keys)


@pytest.mark.parametrize(
    "theorem",
    ["mlp", "add_heads", "heads", "attention", "hidden", "add_layer", "eps"],
)
def test_unmutated_claims_are_proved(theorem):
    assert set(decide(theorem).values()) == {"proved"}


# ---- 1-7: the symbolic model --------------------------------------------------------------------------
def _attention_with(temperature, mask_shift=0):
    def attention(Q, Km, V, causal, K):
        s, k = Q.shape
        out = sp.zeros(s, V.cols)
        for i in range(s):
            cols = range(min(i + 1 + mask_shift, s)) if causal else range(s)
            e = {j: K.exp(sum((Q[i, c] * Km[j, c] for c in range(k)), sp.Integer(0)) * temperature(k)) for j in cols}
            z = K.recip(sum(e.values()))
            for c in range(V.cols):
                out[i, c] = K.canon(sum(e[j] * V[j, c] for j in cols) * z)
        return out

    return attention


def test_mutation_01_no_sqrt_scaling_of_the_logits(monkeypatch):
    monkeypatch.setattr(S, "attention", _attention_with(lambda k: 1))
    monkeypatch.setattr(CH, "sp", _sp_with(sqrt=lambda x: sp.Integer(1)))
    assert _all_fail(decide("attention"))


def test_mutation_02_temperature_1_over_k(monkeypatch):
    monkeypatch.setattr(S, "attention", _attention_with(lambda k: sp.Rational(1, k)))
    monkeypatch.setattr(CH, "sp", _sp_with(sqrt=lambda x: x))
    assert _all_fail(decide("attention"))


def test_mutation_03_norm_over_h_instead_of_h_hat(monkeypatch):
    def rms_norm(Xm, g, eps, K):  # averages over the first 3 columns only: the old width at the wide sizes
        s, h = Xm.shape
        w = min(h, 3)
        out = sp.zeros(s, h)
        for i in range(s):
            r = K.rsqrt(sum((Xm[i, c] ** 2 for c in range(w)), sp.Integer(0)) / w + eps)
            for j in range(h):
                out[i, j] = K.canon(Xm[i, j] * g[0, j] * r)
        return out

    monkeypatch.setattr(S, "rms_norm", rms_norm)
    assert entry_claim("hidden", *X.PAPER["hidden"], sizes=default_sizes("hidden")[1]).status == "refuted"
    assert crosscheck_theorem("hidden", default_sizes("hidden")[1]).status == "refuted"


def test_mutation_04_causal_mask_off_by_one_is_caught_by_the_crosscheck(monkeypatch):
    monkeypatch.setattr(S, "attention", _attention_with(lambda k: 1 / sp.sqrt(k), mask_shift=1))
    assert crosscheck_theorem("mlp", default_sizes("mlp")[0]).status == "refuted"


def test_mutation_05_missing_residual_is_caught_by_the_crosscheck(monkeypatch):
    def residual_streams(m, K):
        Xs = (m.inp + m.pos).applyfunc(K.let)
        out = [Xs]
        for L in m.layers:
            Xs = (Xs + S.mha(L, S.rms_norm(Xs, L.norm_mha, m.eps, K), m.causal, K)).applyfunc(K.let)
            Xs = S.mlp(L, S.rms_norm(Xs, L.norm_mlp, m.eps, K), K).applyfunc(K.let)  # no "X' +"
            out.append(Xs)
        return out

    monkeypatch.setattr(S, "residual_streams", residual_streams)
    assert crosscheck_theorem("heads", default_sizes("heads")[0]).status == "refuted"


def test_mutation_06_kernel_root_rewrite_wrong(monkeypatch):
    def rsqrt(self, arg):  # 1/sqrt(c m) = (1/c) (1/sqrt(m)): the content pulled out without its root
        arg = self.canon(arg)
        c, prim = arg.as_content_primitive()
        if not (c.is_Rational and c > 0):
            c, prim = sp.Integer(1), arg
        return self._atom("rsqrt", self.canon(prim), "rsqrt") / c

    monkeypatch.setattr(C.Kernel, "rsqrt", rsqrt)
    assert _all_fail(decide("hidden"), ["entries small", "entries wide"])
    assert _all_fail(decide("hidden", scale=set()))


def test_mutation_07_generic_activation_given_f0_is_caught_by_numbers(monkeypatch):
    monkeypatch.setitem(C.ACTIVATIONS, "f", (True, C.ACTIVATIONS["f"][1]))
    v = decide("mlp", {"M_l1", "m_b_l1"}, set(), activation="f")
    assert v["entries small"] == "refuted" and v["symbolic"] == "refuted"  # softplus(0) = log 2


# ---- 8-24: the symbolic expansions ----------------------------------------------------------------------
def _wrap(monkeypatch, name, new):
    orig = getattr(X, name)
    monkeypatch.setattr(X, name, lambda *a, **kw: new(orig, *a, **kw))


def _is_terms(M):
    return isinstance(M, C.Term)


def _join(old, new_cols):
    return old.row_join(new_cols)


def test_mutation_08_random_embedding_columns(monkeypatch):
    _wrap(monkeypatch, "expand_hidden", lambda f, m, h, zero=(), *a, **k: f(m, h, set(zero) - {"M_I"}, *a, **k))
    assert _all_fail(decide("hidden"))


def _first_column_only(f, m, h_new, zero=(), scale=(), prefix=""):
    out, made = f(m, h_new, set(zero) - {"M_I"}, scale, prefix)
    d = h_new - m.h
    if _is_terms(m.inp):
        rest = C.Sym(f"{prefix}M_I_rest", m.s, d - 1)
        new = C.Zero(m.s, 1).row_join(rest)
    else:
        rest = S.sym_matrix(f"{prefix}M_I_rest", m.s, d - 1)
        new = sp.zeros(m.s, 1).row_join(rest)
    made = dict(made, M_I=[rest])
    return out.replace(inp=m.inp.row_join(new)), made


def test_mutation_09_off_by_one_zero_embedding_columns_refuted_at_h_3_to_5(monkeypatch):
    _wrap(monkeypatch, "expand_hidden", _first_column_only)
    v = decide("hidden")
    assert v["entries small"] == "proved"  # h 2 -> 3 has a single new column: the bug is invisible there
    assert v["entries wide"] == "refuted" and v["symbolic"] in NOT_PROVED


def test_mutation_10_eps_not_rescaled(monkeypatch):
    _wrap(
        monkeypatch, "expand_hidden", lambda f, m, h, zero, scale=(), *a, **k: f(m, h, zero, set(scale) - {"eps"}, *a)
    )
    assert _all_fail(decide("eps"))


def test_mutation_11_eps_rescaled_the_wrong_way(monkeypatch):
    def f2(f, m, h, zero, scale=(), prefix=""):
        out, made = f(m, h, zero, set(scale) - {"eps"}, prefix)
        return out.replace(eps=m.eps * sp.sympify(h) / m.h), made

    _wrap(monkeypatch, "expand_hidden", f2)
    assert _all_fail(decide("eps"))


def test_mutation_12_wrong_zero_block(monkeypatch):
    def f2(f, m, p, zero=(), *a, **k):
        return f(m, p, {"M_l1"} if "M_l2" in zero else zero, *a, **k)

    _wrap(monkeypatch, "expand_mlp", f2)
    assert _all_fail(decide("mlp"))


def test_mutation_13_both_w_q_and_w_k_scaled(monkeypatch):
    _wrap(monkeypatch, "expand_attention", lambda f, m, k, zero, scale=(), *a: f(m, k, zero, {"W_Q", "W_K"}, *a))
    assert _all_fail(decide("attention"))


def test_mutation_14_inverted_attention_scaling(monkeypatch):
    def f2(f, m, k_new, zero, scale=(), prefix=""):
        out, made = f(m, k_new, zero, (), prefix)
        layers = []
        for L, L0 in zip(out.layers, m.layers):
            heads = []
            for H, H0 in zip(L.heads, L0.heads):
                c = sp.sqrt(sp.sympify(H0.w_q.cols) / k_new)  # sqrt(k/k^) instead of sqrt(k^/k)
                new_k = (H0.w_k * c).row_join(made["M_K"][0]) if "M_K" in made else H.w_k
                heads.append(S.SHead(H.w_q, new_k, H.w_v, H.w_o))
            layers.append(S.SLayer(L.norm_mha, tuple(heads), L.norm_mlp, L.w_l1, L.b_l1, L.w_l2, L.b_l2))
        return out.replace(layers=tuple(layers)), made

    _wrap(monkeypatch, "expand_attention", f2)
    assert _all_fail(decide("attention"))


def _swap_rows(M, top):
    """``[A; B]`` -> ``[B; A]`` where A has ``top`` rows."""
    if _is_terms(M):
        return C.Cat(tuple(reversed(M.blocks)))
    return sp.Matrix.vstack(M[top:, :], M[:top, :])


def test_mutation_15_reordered_w_o_rows(monkeypatch):
    def f2(f, m, v_new, *a, **k):
        out, made = f(m, v_new, *a, **k)
        layers = []
        for L, L0 in zip(out.layers, m.layers):
            heads = tuple(
                S.SHead(H.w_q, H.w_k, H.w_v, _swap_rows(H.w_o, H0.w_o.rows)) for H, H0 in zip(L.heads, L0.heads)
            )
            layers.append(S.SLayer(L.norm_mha, heads, L.norm_mlp, L.w_l1, L.b_l1, L.w_l2, L.b_l2))
        return out.replace(layers=tuple(layers)), made

    _wrap(monkeypatch, "expand_heads", f2)
    assert _all_fail(decide("heads"))


def test_mutation_16_new_rows_of_w_out_before_the_old_ones(monkeypatch):
    def f2(f, m, h_new, *a, **k):
        out, made = f(m, h_new, *a, **k)
        return out.replace(w_out=_swap_rows(out.w_out, m.h)), made

    _wrap(monkeypatch, "expand_hidden", f2)
    assert _all_fail(decide("hidden"))


def test_mutation_17_gain_scaling_inverted(monkeypatch):
    def f2(f, m, h_new, zero, scale=(), prefix=""):
        out, made = f(m, h_new, zero, set(scale) - {"g"}, prefix)
        c = sp.sqrt(sp.sympify(h_new) / m.h)  # sqrt(h^/h) instead of sqrt(h/h^)
        layers = []
        for L, L0, g1, g2 in zip(out.layers, m.layers, made["m_g"][0::2], made["m_g"][1::2]):
            layers.append(
                S.SLayer(
                    (L0.norm_mha * c).row_join(g1),
                    L.heads,
                    (L0.norm_mlp * c).row_join(g2),
                    L.w_l1,
                    L.b_l1,
                    L.w_l2,
                    L.b_l2,
                )
            )
        return out.replace(layers=tuple(layers)), made

    _wrap(monkeypatch, "expand_hidden", f2)
    assert _all_fail(decide("hidden"))


def test_mutation_18_new_layer_bias_not_zeroed(monkeypatch):
    _wrap(
        monkeypatch,
        "add_layer",
        lambda f, m, at, p, E, k, v, zero=(), *a, **kw: f(m, at, p, E, k, v, set(zero) - {"b_l2"}, *a, **kw),
    )
    assert _all_fail(decide("add_layer"))


def test_mutation_19_new_head_output_rows_not_zeroed(monkeypatch):
    _wrap(monkeypatch, "add_heads", lambda f, m, k, v, zero=(), *a, **kw: f(m, k, v, set(zero) - {"M_O"}, *a, **kw))
    assert _all_fail(decide("add_heads"))


def test_mutation_20_zero_block_in_the_first_layer_only(monkeypatch):
    def f2(f, m, h_new, zero, scale=(), prefix=""):
        out, made = f(m, h_new, zero, scale, prefix)
        free, _ = f(m, h_new, set(zero) - {"M_l2"}, scale, prefix + "x")
        return out.replace(layers=out.layers[:1] + free.layers[1:]), made

    _wrap(monkeypatch, "expand_hidden", f2)
    assert _all_fail(decide("hidden"))


def test_mutation_21_new_bias_entries_before_the_old_ones(monkeypatch):
    def f2(f, m, p_new, *a, **k):
        out, made = f(m, p_new, *a, **k)
        layers = []
        for L, L0 in zip(out.layers, m.layers):
            b = L.b_l1
            swapped = (
                C.Cat(((b.blocks[0][1], b.blocks[0][0]),))
                if _is_terms(b)
                else b[:, L0.b_l1.cols :].row_join(b[:, : L0.b_l1.cols])
            )
            layers.append(S.SLayer(L.norm_mha, L.heads, L.norm_mlp, L.w_l1, swapped, L.w_l2, L.b_l2))
        return out.replace(layers=tuple(layers)), made

    _wrap(monkeypatch, "expand_mlp", f2)
    assert _all_fail(decide("mlp"))


def test_mutation_22_new_value_columns_before_the_old_ones(monkeypatch):
    def f2(f, m, v_new, *a, **k):
        out, made = f(m, v_new, *a, **k)
        layers = []
        for L, L0 in zip(out.layers, m.layers):
            heads = []
            for H, H0 in zip(L.heads, L0.heads):
                w = H.w_v
                v = H0.w_v.cols
                sw = C.Cat(((w.blocks[0][1], w.blocks[0][0]),)) if _is_terms(w) else w[:, v:].row_join(w[:, :v])
                heads.append(S.SHead(H.w_q, H.w_k, sw, H.w_o))
            layers.append(S.SLayer(L.norm_mha, tuple(heads), L.norm_mlp, L.w_l1, L.b_l1, L.w_l2, L.b_l2))
        return out.replace(layers=tuple(layers)), made

    _wrap(monkeypatch, "expand_heads", f2)
    assert _all_fail(decide("heads"))


def test_mutation_23_expanded_model_loses_an_output_column(monkeypatch):
    def f2(f, m, p_new, *a, **k):
        out, made = f(m, p_new, *a, **k)
        w = out.w_out
        smaller = C.Sym("w_out_small", w.rows, w.cols - 1) if _is_terms(w) else w[:, :-1]
        return out.replace(w_out=smaller), made

    _wrap(monkeypatch, "expand_mlp", f2)
    v = decide("mlp")
    assert _all_fail(v)
    assert "shapes differ" in entry_claim("mlp", {"M_l2"}, set()).reason


def test_mutation_24_one_new_gain_symbol_shared_by_every_norm(monkeypatch):
    def call(self, name, rows, cols, where=""):  # the tag (layer, norm) is dropped
        if self.terms:
            M = C.Zero(rows, cols, name) if name in self.zero else C.Sym(f"{self.prefix}{name}", rows, cols)
        else:
            M = sp.zeros(rows, cols) if name in self.zero else S.sym_matrix(f"{self.prefix}{name}", rows, cols)
        self.made.setdefault(name, []).append(M)
        return M

    monkeypatch.setattr(X._Blocks, "__call__", call)
    v = decide("hidden")
    assert v["entries small"] == "not proved" and v["entries wide"] == "not proved"
    assert "not fresh" in entry_claim("hidden", *X.PAPER["hidden"]).reason


# ---- 25-27: stand-in keying ------------------------------------------------------------------------------
def test_mutation_25_stand_ins_keyed_by_kind_only(monkeypatch):
    monkeypatch.setattr(C, "stand_in_key", lambda kind, arg: (kind,))
    assert _all_fail(decide("attention", {"M_K"}, set()))  # a false claim is not proved
    assert _all_fail(decide("mlp"))  # and the kernel refuses to identify different arguments


def test_mutation_26_stand_ins_keyed_by_a_prefix_of_the_argument(monkeypatch):
    monkeypatch.setattr(C, "stand_in_key", lambda kind, arg: (kind, str(arg)[:6]))
    assert _all_fail(decide("attention", {"M_K"}, set()), ["entries small", "entries wide"])


def test_mutation_27_shared_stand_ins_without_the_congruence_check_are_refuted_by_numbers(monkeypatch):
    def atom(self, kind, arg, label):  # one stand-in per kind, and no re-check of its argument
        key = (kind,)
        a = self._keys.get(key)
        if a is None:
            a = C.StandIn(f"{label}{len(self.defs)}")
            self._keys[key] = a
            self.defs[a] = (kind, arg)
        return a

    monkeypatch.setattr(C.Kernel, "_atom", atom)
    for theorem, zero, scale in [("attention", {"M_K"}, set()), ("hidden", X.PAPER["hidden"][0], set())]:
        r = entry_claim(theorem, zero, scale, sizes=default_sizes(theorem)[1])
        assert r.status == "refuted", (theorem, r)


# ---- 28-33: rewrite rules and glue -----------------------------------------------------------------------
def test_mutation_28_a_false_glue_step(monkeypatch):
    orig = C.derive

    def derive(*a, **k):
        c = orig(*a, **k)
        if len(c.steps) > 3:
            del c.steps[len(c.steps) // 2]  # a step is skipped: its neighbours no longer meet
        return c

    monkeypatch.setattr(C, "derive", derive)
    assert symbolic("mlp") == "not proved"


def test_mutation_29_a_false_rewrite_rule_is_caught_by_explicit_entries(monkeypatch):
    monkeypatch.setattr(C, "gains_scaled", lambda c, w0, w: True)  # the norm lemma without its hypothesis
    chains, problems = CH.prove_chains("hidden", X.PAPER["hidden"][0], set())
    assert problems and any("sides differ" in p for p in problems)
    assert symbolic("hidden", scale=set()) in NOT_PROVED


def test_mutation_30_block_product_drops_a_term(monkeypatch):
    orig = C._block_product

    def product(A, B):
        out = orig(A, B)
        if out is None:
            return None
        rows = tuple(tuple(b.args[0] if isinstance(b, C.Add) else b for b in r) for r in out.blocks)
        return C.Cat(rows)

    monkeypatch.setattr(C, "_block_product", product)
    assert symbolic("mlp", set(), set()) in NOT_PROVED
    assert symbolic("heads", set(), set()) in NOT_PROVED


def test_mutation_31_lemma_instances_not_substituted(monkeypatch):
    monkeypatch.setattr(C, "subst", lambda t, mapping: t)
    chains, problems = CH.prove_chains("hidden", *X.PAPER["hidden"])
    assert all(c.ok for c in chains) and any("lemma is not about" in p for p in problems)


def test_mutation_32_wrong_stream_relation(monkeypatch):
    monkeypatch.setattr(CH, "relation", lambda theorem, base, expanded: lambda Xs: Xs)
    assert symbolic("hidden") == "not proved"


def test_mutation_33_composition_stage_applied_to_the_wrong_model(monkeypatch):
    orig = CH.prove_stage

    def prove_stage(name, m, prefix, activation="relu"):
        if name == "heads":
            m = CH.term_model(N=2)  # a true theorem, about a model the plan never built
        return orig(name, m, prefix, activation)

    monkeypatch.setattr(CH, "prove_stage", prove_stage)
    chains, problems = CH.prove_compose()
    assert any("not applied to the previous stage" in p for p in problems)


def test_mutation_34_layer_lemma_about_the_base_layer(monkeypatch):
    orig = CH.prove_models

    def prove_models(theorem, base, expanded, new_layers, activation="relu"):
        # lemmas about the base model itself (trivially true), checked against the expanded one
        chains, _ = orig(theorem, base, base, (), activation)
        R = CH.relation(theorem, base, expanded)
        lemmas = (chains[0], [(c, f"X{j}") for j, c in enumerate(chains[1:-1])], (chains[-1], "X_out"))
        return chains, CH.check_induction(base, expanded, new_layers, R, lemmas, activation)

    monkeypatch.setattr(CH, "prove_models", prove_models)
    assert symbolic("mlp", set(), set()) in NOT_PROVED
