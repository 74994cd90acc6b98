"""The safetensors file format: bit-exact round trip and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import fpt_ref
from fpt_ref.model import named_tensors
from fpt_ref.names import HEAD_KINDS, LAYER_KINDS, MODEL_KINDS, parse_name, tensor_name


@pytest.mark.parametrize(
    "vocab,dtype,eps,causal", [(50, "float64", 1e-6, True), (None, "float32", 0.0, False), (7, "float64", 1 / 3, False)]
)
def test_save_load_bit_exact(tmp_path, vocab, dtype, eps, causal, hetero_model):
    m = fpt_ref.expand_heads(hetero_model(vocab=vocab, dtype=dtype, eps=eps, causal=causal), 6, layers=[1], heads=[0])
    path = tmp_path / "m.safetensors"
    fpt_ref.save(m, path)
    back = fpt_ref.load(path)
    a, b = named_tensors(m), named_tensors(back)
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        assert a[k].tobytes() == b[k].tobytes(), k
    assert back.norm_eps == m.norm_eps and back.causal == m.causal


def test_file_names_are_the_documented_layout(tmp_path, hetero_model):
    m = hetero_model()
    path = tmp_path / "m.safetensors"
    fpt_ref.save(m, path)
    names = set(load_file(str(path)))
    assert {
        "embed",
        "pos",
        "w_out",
        "layers.0.norm_mha",
        "layers.0.heads.0.w_q",
        "layers.0.heads.1.w_o",
        "layers.1.heads.3.w_k",
        "layers.1.norm_mlp",
        "layers.1.w_l1",
        "layers.1.b_l1",
        "layers.1.w_l2",
        "layers.1.b_l2",
    } <= names
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"format": "fpt-ref/1", "norm_eps": "1e-06", "causal": "true"}


def _write(tmp_path, tensors, meta=None):
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata=meta or {"format": "fpt-ref/1", "norm_eps": "0.0", "causal": "false"})
    return path


@pytest.fixture
def tensors(hetero_model):
    """The shared model's tensors under their file names, ready for ``save_file``."""
    return {k: np.ascontiguousarray(v) for k, v in named_tensors(hetero_model()).items()}


def test_missing_tensor(tmp_path, tensors):
    t = tensors
    del t["layers.1.w_l2"]
    with pytest.raises(fpt_ref.FormatError, match="missing tensor 'layers.1.w_l2'"):
        fpt_ref.load(_write(tmp_path, t))


def test_extra_or_misnamed_tensor(tmp_path, tensors):
    t = tensors
    t["layers.0.w_l3"] = np.zeros(3)
    with pytest.raises(fpt_ref.FormatError, match=r"unexpected tensor 'layers.0.w_l3' with shape \[3\]"):
        fpt_ref.load(_write(tmp_path, t))


def test_wrong_shape(tmp_path, tensors):
    t = tensors
    t["layers.0.heads.1.w_k"] = np.zeros((6, 4))
    with pytest.raises(
        fpt_ref.FormatError, match=r"layers.0.heads.1.w_k: shape \[6, 4\] does not match expected \[6, 3\]"
    ):
        fpt_ref.load(_write(tmp_path, t))


@pytest.mark.parametrize(
    "meta,msg",
    [
        ({"format": "other/2"}, "format"),
        ({"format": "fpt-ref/1", "norm_eps": "abc"}, "norm_eps"),
        ({"format": "fpt-ref/1", "causal": "yes"}, "causal"),
    ],
)
def test_bad_metadata(tmp_path, meta, msg, tensors):
    with pytest.raises(fpt_ref.FormatError, match=msg):
        fpt_ref.load(_write(tmp_path, tensors, meta))


def test_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        fpt_ref.load(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    with pytest.raises(fpt_ref.FormatError, match="not a readable safetensors file"):
        fpt_ref.load(junk)


@pytest.mark.parametrize("name", ["layers.00.w_l1", "layers.0.heads.00.w_q", "layers.01.heads.0.w_k"])
def test_non_canonical_indices_are_unexpected_tensors(tmp_path, name, tensors):
    t = tensors
    t[name] = np.zeros((6, 5))
    with pytest.raises(fpt_ref.FormatError, match=f"unexpected tensor '{name}'"):
        fpt_ref.load(_write(tmp_path, t))


def test_unsupported_dtype_file_is_a_format_error(tmp_path):
    import json
    import struct

    # a complete 0-layer model stored as bfloat16, written by hand
    header = json.dumps(
        {
            "pos": {"dtype": "BF16", "shape": [1, 1], "data_offsets": [0, 2]},
            "w_out": {"dtype": "BF16", "shape": [1, 1], "data_offsets": [2, 4]},
            "__metadata__": {"format": "fpt-ref/1"},
        }
    ).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x80\x3f\x80\x3f")
    # the header alone is refused: the data is never handed to NumPy
    with pytest.raises(fpt_ref.FormatError, match="tensor 'pos' has dtype BF16; the format holds F64 or F32"):
        fpt_ref.load(path)


def test_nan_eps_in_metadata_is_a_format_error(tmp_path, tensors):
    with pytest.raises(fpt_ref.FormatError, match="norm_eps"):
        fpt_ref.load(_write(tmp_path, tensors, {"format": "fpt-ref/1", "norm_eps": "nan", "causal": "false"}))


def test_save_to_a_missing_folder_is_refused(tmp_path, hetero_model):
    with pytest.raises(ValueError, match="^path: folder .* does not exist"):
        fpt_ref.save(hetero_model(), tmp_path / "no" / "such" / "m.safetensors")


# ---- the tensor-name grammar (fpt_ref.names) ---------------------------------------------


def test_every_tensor_name_parses_back_to_its_place(hetero_model):
    m = hetero_model()
    seen = set()
    for name in named_tensors(m):
        kind, n, e = parse_name(name)
        assert tensor_name(kind, n, e) == name
        seen.add((kind, n, e))
    # the documented layout, written out: 3 model tensors, 6 per layer, 4 per head
    assert ("embed", None, None) in seen and ("w_l2", 1, None) in seen and ("w_o", 1, 3) in seen
    assert len(seen) == 3 + 2 * 6 + 4 * (2 + 4)


def test_kinds_are_the_fields_of_the_containers():
    from dataclasses import fields

    assert HEAD_KINDS == tuple(f.name for f in fields(fpt_ref.Head))
    assert set(LAYER_KINDS) == {f.name for f in fields(fpt_ref.Layer)} - {"heads", "kv_heads"}
    assert set(MODEL_KINDS) == {"embed", "pos", "w_out", "final_norm", "final_norm_b"}


@pytest.mark.parametrize(
    "name",
    [
        "layers.00.w_l1",
        "layers.0.heads.01.w_q",
        "layers.0.embed",  # a model tensor under a layer
        "layers.0.heads.0.w_l1",  # a layer tensor under a head
        "layers.0.w_q",  # a head tensor without its head
        "w_l1",
        "heads.0.w_q",
        "layers.-1.w_l1",
        "layers.0.w_l3",
        "layers.0.W_O",  # the figures' stacked view is not a file tensor
        "",
    ],
)
def test_names_outside_the_grammar_are_refused(name):
    with pytest.raises(ValueError, match=r"^name: "):
        parse_name(name)


def test_tensor_name_refuses_indices_that_do_not_fit_the_kind():
    assert tensor_name("w_out") == "w_out" and tensor_name("b_l1", 12) == "layers.12.b_l1"
    for args in (("w_q", 0), ("w_l1",), ("pos", 0), ("w_l1", 0, 0), ("nope", 0)):
        with pytest.raises(ValueError, match=r"^kind: "):
            tensor_name(*args)


def test_a_model_tensor_under_a_layer_is_an_unexpected_tensor(tmp_path, tensors):
    t = dict(tensors)
    t["layers.0.pos"] = np.zeros((5, 6))
    with pytest.raises(fpt_ref.FormatError, match="unexpected tensor 'layers.0.pos'"):
        fpt_ref.load(_write(tmp_path, t))


# ---- inputs users really have: devices, permissions, truncated files, NaN, header-only reads ----


def test_a_device_is_not_a_regular_file():
    with pytest.raises(fpt_ref.FormatError, match=r"^/dev/null: not a regular file \(a character device\)$"):
        fpt_ref.load("/dev/null")


def test_a_directory_is_not_a_regular_file(tmp_path):
    with pytest.raises(fpt_ref.FormatError, match=r"not a regular file \(a directory\)"):
        fpt_ref.load(tmp_path)


def test_permission_error_says_permission_denied(tmp_path, monkeypatch, hetero_model):
    path = tmp_path / "m.safetensors"
    fpt_ref.save(hetero_model(), path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("fpt_ref.io.os.stat", denied)  # root reads every file: simulate the refusal
    with pytest.raises(PermissionError, match="permission denied") as info:
        fpt_ref.load(path)
    assert "No such file" not in str(info.value)


@pytest.mark.parametrize("cut", [1, 100, 8])
def test_truncated_file_is_refused_from_the_header(tmp_path, hetero_model, cut):
    path = tmp_path / "m.safetensors"
    fpt_ref.save(hetero_model(), path)
    data = path.read_bytes()
    path.write_bytes(data[:-cut] if cut != 8 else data[:8])
    with pytest.raises(fpt_ref.FormatError, match="truncated|header of|not a readable"):
        fpt_ref.load(path)


def test_declared_size_that_does_not_match_the_shape(tmp_path):
    import json
    import struct

    header = json.dumps(
        {
            "pos": {"dtype": "F64", "shape": [1000000, 1000000], "data_offsets": [0, 8]},
            "w_out": {"dtype": "F64", "shape": [1, 1], "data_offsets": [8, 16]},
            "__metadata__": {"format": "fpt-ref/1"},
        }
    ).encode()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(fpt_ref.FormatError, match=r"tensor 'pos' declares shape \[1000000, 1000000\]"):
        fpt_ref.load(path)


@pytest.mark.parametrize("value,count", [(np.nan, 1), (np.inf, 3), (-np.inf, 2)])
def test_nonfinite_weights_are_named_at_load(tmp_path, hetero_model, value, count):
    m = hetero_model()
    t = {k: np.array(v) for k, v in named_tensors(m).items()}
    t["layers.1.w_l1"].flat[:count] = value
    path = tmp_path / "nan.safetensors"
    fpt_ref.save(fpt_ref.model.from_tensors(t, m.norm_eps, m.causal), path)
    with pytest.raises(fpt_ref.FormatError, match=rf"tensor 'layers.1.w_l1' holds {count} non-finite value"):
        fpt_ref.load(path)
    back = fpt_ref.load(path, allow_nonfinite=True)
    assert int(np.sum(~np.isfinite(back.layers[1].w_l1))) == count
    from fpt_ref.io import nonfinite_counts

    assert nonfinite_counts(named_tensors(back)) == {"layers.1.w_l1": count}


def test_load_header_reads_no_data(tmp_path, hetero_model, monkeypatch):
    from fpt_ref.io import load_header

    m = hetero_model()
    path = tmp_path / "m.safetensors"
    fpt_ref.save(m, path)

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read")

    monkeypatch.setattr("safetensors.safe_open", no_data)
    monkeypatch.setattr("safetensors.numpy.load_file", no_data)
    shell = load_header(path)
    assert fpt_ref.dims(shell) == fpt_ref.dims(m) and fpt_ref.param_count(shell) == fpt_ref.param_count(m)
    assert (shell.norm_eps, shell.causal) == (m.norm_eps, m.causal)


def test_from_tensors_and_to_tensors_round_trip(hetero_model):
    from fpt_ref.model import from_tensors, to_tensors

    m = hetero_model(vocab=9, causal=True, eps=1e-6)
    t = to_tensors(m)
    back = from_tensors(t, norm_eps=m.norm_eps, causal=m.causal)
    assert list(to_tensors(back)) == list(t)
    assert all(to_tensors(back)[k] is t[k] for k in t)  # no copies
    assert fpt_ref.dims(back) == fpt_ref.dims(m) and back.causal and back.norm_eps == 1e-6
    with pytest.raises(ValueError, match="^tensors: missing tensor 'layers.1.w_l2'"):
        from_tensors({k: v for k, v in t.items() if k != "layers.1.w_l2"})
    with pytest.raises(ValueError, match="^tensors: unexpected tensor 'bogus'"):
        from_tensors(dict(t, bogus=np.zeros(2)))


def test_a_checkpoint_folder_loads_through_fpt_ref_load(tmp_path):
    """fpt_ref.load(DIR) reads a Hugging Face checkpoint folder (fpt_ref.hf), and its errors are
    FormatErrors naming the folder."""
    from fpt_ref import hf

    m = fpt_ref.init_model(
        h=8, p=16, n_heads=2, k=4, v=4, n_layers=1, vocab=11, out_dim=11, max_seq=6, arch="llama", eps=1e-5, causal=True
    )
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 6}
    hf.save(m, tmp_path / "ck", like=config, dtype="float64")
    loaded = fpt_ref.load(tmp_path / "ck")
    x = np.arange(6)[None] % 11
    assert np.array_equal(fpt_ref.forward(loaded, x), fpt_ref.forward(m, x))
    (tmp_path / "ck" / "config.json").write_text('{"model_type": "qwen3"}')
    with pytest.raises(fpt_ref.FormatError, match=r"ck: "):
        fpt_ref.load(tmp_path / "ck")
