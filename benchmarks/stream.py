"""Streaming certification of a billion-parameter bf16 checkpoint: time and peak memory (docs/benchmarks.md).

``python -m fpt_ref.benchmarks.stream [--size 1b|tiny] [--dir DIR] [--keep] [--json FILE]``

1. Writes a synthetic llama-style checkpoint folder in bf16 (random bits, one tensor at a
   time: never held whole) and its LLaMA-Pro block expansion (a copy of every ``every``-th
   layer inserted after it, ``o_proj`` and ``down_proj`` of the copy zero; config updated),
   also tensor by tensor, copying the stored bits of the base.
2. Measures, each in its own subprocess so that each peak resident set is its own:
   ``read``: reading every stored byte of both folders once (64 MiB at a time);
   ``certify``: :func:`fpt_ref.certify.stream.certify_folders` (the block audit; no forward);
   ``forward``: :func:`fpt_ref.certify.stream_forward.forward_folders` (the sampled forward check,
   float64, a layer at a time);
   ``grow``: the block expansion above (read the base, write the grown folder);
   ``expand``: :func:`fpt_ref.hf.stream_expand.expand_stream` without its certification, on
   the plans of :func:`plans`, then ``certify`` and ``read`` of base and output (the MLP plan
   changes every layer: every layer is decoded).
   The files were just written, so the page cache holds them: "read" is a warm read, the
   same for every measurement of the run.
3. Prints the figures (seconds, GB/s of stored weights, ratio to the read, peak RSS against
   the largest layer and the embeddings in the working dtype) and writes them as JSON.

The folders are made in a temporary directory and removed afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

#: llama-style sizes: ``1b`` is TinyLlama-1.1B's shape (h 2048, 22 layers, GQA 32/4, p 5632, vocab 32000)
SIZES = {
    "1b": dict(h=2048, N=22, H=32, G=4, d=64, p=5632, V=32000, every=6),
    "mid": dict(h=1024, N=4, H=16, G=4, d=64, p=2816, V=8000, every=2),
    "tiny": dict(h=64, N=4, H=4, G=2, d=16, p=160, V=512, every=2),
}


def config_of(z: dict, n_layers: int) -> dict:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": z["h"],
        "intermediate_size": z["p"],
        "num_hidden_layers": n_layers,
        "num_attention_heads": z["H"],
        "num_key_value_heads": z["G"],
        "head_dim": z["d"],
        "vocab_size": z["V"],
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    }


def layer_shapes(z: dict) -> dict:
    h, H, G, d, p = z["h"], z["H"], z["G"], z["d"], z["p"]
    return {
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (H * d, h),
        "self_attn.k_proj.weight": (G * d, h),
        "self_attn.v_proj.weight": (G * d, h),
        "self_attn.o_proj.weight": (h, H * d),
        "mlp.gate_proj.weight": (p, h),
        "mlp.up_proj.weight": (p, h),
        "mlp.down_proj.weight": (h, p),
    }


def model_shapes(z: dict) -> dict:
    return {
        "model.embed_tokens.weight": (z["V"], z["h"]),
        "model.norm.weight": (z["h"],),
        "lm_head.weight": (z["V"], z["h"]),
    }


def plans(z: dict) -> list:
    """The plans ``expand --stream`` is timed on: LLaMA-Pro-like insertions (the other layers
    copied as stored) and an MLP widening of every layer (each one computed in float64)."""
    n = z["N"]
    inserts = "; ".join(f"add_layer at={a}" for a in range(z["every"], n + n // z["every"], z["every"] + 1))
    return [inserts, f"mlp p={z['p'] + max(64, z['p'] // 11 // 64 * 64)}"]


def _write_file(path: str, shapes: dict, fill) -> None:
    """A safetensors file of BF16 tensors ``shapes`` (name -> shape); ``fill(name, shape)`` gives
    each tensor's ``uint16`` bits when its turn comes (one tensor in memory at a time)."""
    names = sorted(shapes)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        size = 2 * int(np.prod(shapes[name], dtype=np.int64))
        header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in names:
            bits = fill(name, shapes[name])
            f.write(np.ascontiguousarray(bits, dtype="<u2").tobytes())
            del bits


def _write_folder(folder: str, config: dict, shapes: dict, fill) -> None:
    """A checkpoint folder: one shard per layer group of about 1 GB, an index, ``config.json``."""
    os.makedirs(folder, exist_ok=True)
    groups: list = [[]]
    used = 0
    for name in sorted(shapes):
        size = 2 * int(np.prod(shapes[name], dtype=np.int64))
        if groups[-1] and used + size > 2**30:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    files = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    for file, group in zip(files, groups):
        _write_file(os.path.join(folder, file), {k: shapes[k] for k in group}, fill)
    total = sum(2 * int(np.prod(s, dtype=np.int64)) for s in shapes.values())
    index = {"metadata": {"total_size": total}, "weight_map": {k: f for f, g in zip(files, groups) for k in g}}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)


def write_base(folder: str, z: dict, seed: int = 0) -> None:
    """The synthetic base: bf16 bits of normal values (std 0.02; norm gains near 1), tensor by tensor."""
    rng = np.random.default_rng(seed)
    shapes = dict(model_shapes(z))
    for n in range(z["N"]):
        shapes.update({f"model.layers.{n}.{k}": s for k, s in layer_shapes(z).items()})

    def fill(name, shape):
        x = rng.standard_normal(shape, dtype=np.float32)  # [shape]
        x *= np.float32(0.1 if len(shape) == 1 else 0.02)
        if len(shape) == 1:
            x += np.float32(1.0)
        return (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16)  # truncated to bf16

    _write_folder(folder, config_of(z, z["N"]), shapes, fill)


def grow_llama_pro(base: str, out: str, every: int) -> int:
    """LLaMA-Pro's block expansion of checkpoint folder ``base``, written tensor by tensor: a copy
    of layer ``i`` inserted after it for every ``i`` with ``(i + 1) % every == 0``, the copy's
    ``o_proj`` and ``down_proj`` zero (an identity layer); returns the grown layer count."""
    from fpt_ref.hf.files import Tensors, read_config

    ts = Tensors(base)
    config = read_config(base)
    N = config["num_hidden_layers"]
    source: dict = {}  # grown name -> (base name, zero)
    j = 0
    for i in range(N):
        for copy in (False, True) if (i + 1) % every == 0 else (False,):
            for name in ts.names():
                pre = f"model.layers.{i}."
                if name.startswith(pre):
                    rest = name[len(pre) :]
                    zero = copy and rest.startswith(("self_attn.o_proj", "mlp.down_proj"))
                    source[f"model.layers.{j}.{rest}"] = (name, zero)
            j += 1
    for name in ts.names():
        if not name.startswith("model.layers."):
            source[name] = (name, False)
    shapes = {k: ts.shape(b) for k, (b, _) in source.items()}

    def fill(name, shape):
        b, zero = source[name]
        if zero:
            return np.zeros(shape, np.uint16)
        mm, _ = ts._map(b)
        return np.array(mm)  # the stored bits, copied

    _write_folder(out, dict(config, num_hidden_layers=j), shapes, fill)
    return j


def _peak() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) * 1024
    return out


def stored_bytes(folder: str) -> int:
    from fpt_ref.hf.files import STORED, Tensors

    ts = Tensors(folder)
    return sum(int(np.prod(s, dtype=np.int64)) * STORED[dt].itemsize for _, dt, s in ts.entries.values())


def _child(args) -> dict:
    """One measurement (run in its own process; the modules it runs are imported before the clock starts)."""
    from fpt_ref.certify.stream import certify_folders
    from fpt_ref.certify.stream_forward import forward_folders
    from fpt_ref.hf.stream_expand import expand_stream

    before = _peak()["VmRSS"]
    t0 = time.perf_counter()
    info: dict = {}
    if args.child == "read":
        buf = bytearray(64 * 2**20)
        n = 0
        for folder in args.folders:
            for file in sorted(os.listdir(folder)):
                if file.endswith(".safetensors"):
                    with open(os.path.join(folder, file), "rb", buffering=0) as f:
                        while True:
                            got = f.readinto(buf)
                            if not got:
                                break
                            n += got
        info["bytes"] = n
    elif args.child == "certify":
        cert = certify_folders(args.folders[0], args.folders[1])
        info.update(
            ok=cert.ok,
            findings=len(cert.findings),
            blocks=cert.blocks,
            layers=[L["base"] for L in cert.layers],
            reads=cert.reads,
        )
    elif args.child == "forward":
        res = forward_folders(args.folders[0], args.folders[1])
        info.update(ok=res["ok"], max_ulp=res["max_ulp"], tol_ulp=res["tol_ulp"], inputs=res["inputs"])
    elif args.child == "grow":
        info["layers"] = grow_llama_pro(args.folders[0], args.folders[1], args.every)
    elif args.child == "expand":
        expand_stream(args.folders[0], args.plan, args.folders[1], check=False)
    seconds = time.perf_counter() - t0
    p = _peak()
    return dict(info, seconds=seconds, rss_before=before, peak_rss=p["VmHWM"])


def _run_child(mode: str, folders: list, every: int = 0, plan: str = "") -> dict:
    cmd = [sys.executable, "-m", "fpt_ref.benchmarks.stream", "--child", mode, "--every", str(every)]
    cmd += ["--plan", plan, *folders]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
        raise RuntimeError(f"{mode} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(size: str = "1b", where: str | None = None, keep: bool = False) -> dict:
    """Write the two folders, measure, and return the figures (module doc)."""
    z = SIZES[size]
    root = tempfile.mkdtemp(prefix="fpt-stream-", dir=where)
    base, grown = os.path.join(root, "base"), os.path.join(root, "grown")
    try:
        t0 = time.perf_counter()
        write_base(base, z)
        write_s = time.perf_counter() - t0
        grow = _run_child("grow", [base, grown], z["every"])
        read = _run_child("read", [base, grown])
        cert = _run_child("certify", [base, grown])
        read2 = _run_child("read", [base, grown])  # again after: the page cache as certify saw it
        forward = _run_child("forward", [base, grown])  # the sampled forward check, streamed
        nb, ng = stored_bytes(base), stored_bytes(grown)
        expands = []
        for plan in plans(z):
            out = os.path.join(root, f"expand{len(expands)}")
            e = _run_child("expand", [base, out], plan=plan)
            e.update(plan=plan, bytes=stored_bytes(out))
            e["certify"] = _run_child("certify", [base, out])  # layers that changed are decoded
            e["read"] = _run_child("read", [base, out])
            shutil.rmtree(out, ignore_errors=True)
            expands.append(e)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    params = nb // 2
    layer = sum(int(np.prod(s)) for s in layer_shapes(z).values())
    embeddings = 2 * z["V"] * z["h"]  # embed_tokens and lm_head
    f32 = 4
    budget = (2 * layer + embeddings) * f32
    read_s = min(read["seconds"], read2["seconds"])
    out = {
        "size": size,
        "dims": z,
        "params_base": params,
        "layers": [z["N"], grow["layers"]],
        "bytes": {"base": nb, "grown": ng},
        "write_base_s": write_s,
        "grow": grow,
        "read": [read, read2],
        "certify": cert,
        "forward": forward,
        "read_s": read_s,
        "read_GBps": (nb + ng) / read_s / 1e9,
        "certify_GBps": (nb + ng) / cert["seconds"] / 1e9,
        "certify_over_read": cert["seconds"] / read_s,
        "grow_GBps": (nb + ng) / grow["seconds"] / 1e9,
        "expand": expands,
        "largest_layer_bytes_f32": layer * f32,
        "embeddings_bytes_f32": embeddings * f32,
        "budget_bytes": budget,
        "certify_peak_over_budget": cert["peak_rss"] / budget,
        "certify_added_over_budget": (cert["peak_rss"] - cert["rss_before"]) / budget,
        "folder": root if keep else None,
    }
    return out


def report(r: dict) -> str:
    G = 1e9
    c = r["certify"]
    lines = [
        f"synthetic llama bf16: {r['params_base'] / 1e9:.3f}B parameters, {r['layers'][0]} -> {r['layers'][1]} layers "
        f"(LLaMA-Pro copies); stored {r['bytes']['base'] / G:.2f} + {r['bytes']['grown'] / G:.2f} GB",
        f"read once (warm page cache): {r['read_s']:.2f} s, {r['read_GBps']:.2f} GB/s",
        f"certify (streamed block audit): {c['seconds']:.2f} s, {r['certify_GBps']:.2f} GB/s, "
        f"{r['certify_over_read']:.2f}x the read; ok={c['ok']}, {c['blocks']} blocks, alignment {c['layers']}",
        f"  peak RSS {c['peak_rss'] / G:.3f} GB (before the work {c['rss_before'] / G:.3f} GB); budget 2 layers + "
        f"embeddings (float32) = {r['budget_bytes'] / G:.3f} GB: peak/budget {r['certify_peak_over_budget']:.2f}, "
        f"added/budget {r['certify_added_over_budget']:.2f}",
        f"forward check (streamed, float64, {r['forward']['inputs']['sets']['random']} tokens): "
        f"{r['forward']['seconds']:.2f} s, ok={r['forward']['ok']}, {r['forward']['max_ulp']:.3g} ulp "
        f"(tolerance {r['forward']['tol_ulp']:.3g}), peak RSS {r['forward']['peak_rss'] / G:.3f} GB",
        f"grow (LLaMA-Pro copies written tensor by tensor): {r['grow']['seconds']:.2f} s, {r['grow_GBps']:.2f} GB/s "
        f"(base read + grown written), peak RSS {r['grow']['peak_rss'] / G:.3f} GB",
    ]
    for e in r["expand"]:
        lines.append(
            f"expand --stream '{e['plan']}' (no check): {e['seconds']:.2f} s, "
            f"{(r['bytes']['base'] + e['bytes']) / e['seconds'] / G:.2f} GB/s (read + written), "
            f"peak RSS {e['peak_rss'] / G:.3f} GB"
        )
        c, rd = e["certify"], e["read"]
        lines.append(
            f"  certify of its output: {c['seconds']:.2f} s ({rd['seconds']:.2f} s to read both once: "
            f"{c['seconds'] / rd['seconds']:.2f}x), ok={c['ok']}, peak RSS {c['peak_rss'] / G:.3f} GB"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fpt_ref.benchmarks.stream", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--dir", default=None, help="where the temporary folder is made (default: the system's)")
    ap.add_argument("--keep", action="store_true", help="keep the two checkpoint folders")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--every", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--plan", default="", help=argparse.SUPPRESS)
    ap.add_argument("folders", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return 0
    r = run(args.size, args.dir, args.keep)
    print(report(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
