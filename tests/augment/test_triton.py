"""The Triton kernel against the C++ kernel and the PIL reference.

CPU: ``TRITON_INTERPRET=1 python -m pytest tests/augment -m interpret`` (tiny images; the
interpreter runs each program in NumPy). On CUDA the same tests run on the device, plus the
``gpu`` ones (larger images, ``torch.compile``).
"""

from __future__ import annotations

import random

import pytest
import torch
from augment_helpers import canonical, make_images, random_batch, values_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastorals
from fastorals import augment
from fastorals.augment import opset as O
from fastorals.augment.ops import augment_apply_reference


def _triton():
    from fastorals.augment.triton import augment_apply_triton

    return augment_apply_triton


def _to(args, device):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def _within_bar(a: torch.Tensor, r: torch.Tensor, exact: bool, what: str) -> None:
    if exact:
        assert torch.equal(a, r), f"{what}: max diff {(a.double() - r.double()).abs().max().item()}"
    else:  # the device's sin/cos may round differently in rare places: the acceptance bar
        d = (a.double() - r.double()).abs()
        assert (d <= 1).double().mean() >= 0.99, what


@pytest.mark.interpret
@pytest.mark.parametrize("chw, path", [((3, 9, 7), "op"), ((1, 6, 5), "op"), ((3, 2, 3), "op"), ((3, 9, 7), "tiled"),
                                       ((1, 6, 5), "tiled")], ids=lambda s: "x".join(map(str, s)) if isinstance(s, tuple) else s)
def test_each_op_matches_pil(triton_device, chw, path):
    # "op": the registered op (one program per image at these sizes); "tiled": several programs per
    # image (3 programs over 4 or 2 tiles of 16 pixels), every op and every pass
    from fastorals.augment.triton import apply_chains

    c, h, w = chw
    exact = triton_device.type == "cpu"
    ops, vals = [], []
    for op in range(O.NUM_OPS):
        for v in values_for(op)[:4]:
            ops.append(op)
            vals.append(v)
    n = len(ops)
    images = make_images(n, c, h, w, seed=1)
    args = canonical(images, torch.tensor(ops).view(n, 1), torch.tensor(vals).view(n, 1))
    dev_args = _to(args, triton_device)
    out = (_triton()(*dev_args) if path == "op" else apply_chains(*dev_args, tiles=3, block=16)).cpu()
    ref = augment_apply_reference(*args)
    for i in range(n):
        _within_bar(out[i], ref[i], exact, f"{O.OP_NAMES[ops[i]]}({vals[i]}) on {chw}, {path}")


@pytest.mark.interpret
def test_random_chains_with_pipeline_match_pil(triton_device):
    rng = random.Random(5)
    exact = triton_device.type == "cpu"
    for trial in range(4):
        c = rng.choice([1, 3])
        args = random_batch(rng, 3, c, rng.choice([1, 4, 8]), rng.choice([2, 5, 8]), rng.randint(0, 5), seed=trial)
        out = _triton()(*_to(args, triton_device)).cpu()
        _within_bar(out, augment_apply_reference(*args), exact, f"trial {trial}")


@pytest.mark.interpret
def test_public_api_on_triton_backend(triton_device):
    images = make_images(3, 3, 6, 6).to(triton_device)
    aug = augment.BatchAugment(crop_padding=2, flip_prob=0.5, cutout=2)  # uint8 output
    s = torch.tensor([0, 3, 10])
    with fastorals.use_backend("triton"):
        a = aug(images, s, torch.Generator().manual_seed(0))
    with fastorals.use_backend("reference"):
        r = aug(images.cpu(), s, torch.Generator().manual_seed(0))
    assert a.device.type == triton_device.type and a.dtype == torch.uint8
    _within_bar(a.cpu(), r, triton_device.type == "cpu", "BatchAugment")


@pytest.mark.interpret
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), tiles=st.integers(2, 6), block=st.sampled_from([16, 32, 64]),
       c=st.sampled_from([1, 3]), h=st.integers(1, 13), w=st.integers(1, 13), k=st.integers(0, 5))
def test_tiled_path_equals_one_program_per_image(seed, tiles, block, c, h, w, k):
    # the same bytes for any split of an image into programs: tiles more or fewer than its blocks,
    # chains mixing in-place ops, buffer-moving ops and multi-pass ops
    from fastorals.augment.triton import apply_chains

    dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    args = _to(random_batch(random.Random(seed), 3, c, h, w, k, seed=seed % 1000), dev)
    assert torch.equal(apply_chains(*args, tiles=tiles, block=block), apply_chains(*args, tiles=1))


def test_programs_per_image_rule():
    from fastorals.augment.triton import BLOCK, TILED_BLOCK, tile_pixels, tiles_per_image

    assert tiles_per_image(1024, 32, 32) == 1  # CIFAR: one program per image
    assert tiles_per_image(1, 63, 64) == 1 and tiles_per_image(1, 64, 64) == 4 * BLOCK // TILED_BLOCK
    assert tiles_per_image(64, 224, 224) == -(-224 * 224 // TILED_BLOCK)  # ImageNet, small batch: one per tile
    assert 4 <= tiles_per_image(4096, 224, 224) < -(-224 * 224 // TILED_BLOCK)  # large batch: fewer, at least 4
    assert tiles_per_image(1, 8000, 8000) == 16384  # capped
    assert tile_pixels(1) == BLOCK and tile_pixels(98) == TILED_BLOCK


def test_chain_buffers_follow_the_ops_that_move_the_image():
    from fastorals.augment.triton import chain_buffers, geometric_params

    ops = torch.tensor([[O.FLIP, O.INVERT, O.SMOOTH, O.GAUSSIAN_BLUR, O.ROTATE, O.RESIZE_CROP],
                        [O.ROTATE, O.EQUALIZE, O.SHARPNESS, O.NONE, O.TRANSLATE_X, O.CONTRAST]], dtype=torch.int32)
    vals = torch.tensor([[0, 0, 0, 1.5, 30.0, 1.2], [0.0, 0, 0.5, 0, 3.0, 0.4]], dtype=torch.float64)
    cur, final = chain_buffers(ops, geometric_params(ops, vals, 8, 8), 8, 8)
    # a rotation by 0 degrees is the identity and does not move the image
    assert cur.tolist() == [[0, 1, 1, 0, 0, 1], [0, 0, 0, 1, 1, 0]] and final.tolist() == [1, 0]
    cur, final = chain_buffers(ops, geometric_params(ops, vals, 2, 8), 2, 8)  # filters skip images < 3 rows
    assert cur.tolist() == [[0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]] and final.tolist() == [0, 1]
    empty = torch.zeros(2, 0, dtype=torch.int32)
    cur, final = chain_buffers(empty, geometric_params(empty, empty.double(), 8, 8), 8, 8)
    assert cur.shape == (2, 0) and final.tolist() == [0, 0]


def test_geometric_params_op_is_the_function_and_passes_opcheck():
    # an op (not traced by torch.compile, which would lower its float64 arithmetic differently)
    from fastorals.augment.triton import geometric_params

    ops = torch.tensor([[O.ROTATE, O.SHEAR_X, O.NONE], [O.FLIP, O.ROTATE, O.TRANSLATE_Y]], dtype=torch.int32)
    vals = torch.tensor([[17.3, 0.21, 0.0], [0.0, -90.0, 3.0]], dtype=torch.float64)
    got = torch.ops.fastorals.augment_geometric_params(ops, vals, 9, 9)
    assert torch.equal(got, geometric_params(ops, vals, 9, 9)) and got.is_contiguous()
    torch.library.opcheck(torch.ops.fastorals.augment_geometric_params, (ops, vals, 9, 9))


@pytest.mark.parametrize("tiles, block", [(0, 16), (2, 24), (2, 8)])
def test_apply_chains_rejects_bad_split(tiles, block):
    from fastorals.augment.triton import apply_chains

    args = canonical(make_images(1, 1, 4, 4), torch.zeros(1, 0, dtype=torch.int32), torch.zeros(1, 0))
    with pytest.raises(ValueError, match="tiles, block"):
        apply_chains(*args, tiles=tiles, block=block)
    with pytest.raises(ValueError, match="warps"):
        apply_chains(*args, tiles=1, warps=3)


@pytest.mark.gpu
def test_gpu_matches_cpu_kernel_on_cifar_sized_batches():
    from fastorals._ext import HAS_EXT
    from fastorals.augment.ops import augment_apply_cpp

    cpu = augment_apply_cpp if HAS_EXT else augment_apply_reference  # the two are equal (test_ops_vs_pil)
    rng = random.Random(0)
    for trial in range(3):
        args = random_batch(rng, 64, 3, 32, 32, 10, seed=trial)
        out = _triton()(*_to(args, torch.device("cuda"))).cpu()
        _within_bar(out, cpu(*args), False, f"trial {trial}")


@pytest.mark.gpu
def test_gpu_torch_compile_over_the_triton_op():
    rng = random.Random(1)
    args = _to(random_batch(rng, 8, 3, 32, 32, 4, seed=1), torch.device("cuda"))
    eager = _triton()(*args)
    compiled = torch.compile(lambda *a: torch.ops.fastorals.augment_apply_triton(*a))(*args)
    assert torch.equal(eager, compiled)


@pytest.mark.gpu
def test_gpu_tiled_path_on_imagenet_sized_images():
    # the path the op takes at 224 px: equal to one program per image, and within the bar of PIL
    from fastorals.augment.triton import apply_chains, tiles_per_image

    rng = random.Random(2)
    args = random_batch(rng, 6, 3, 224, 224, 10, seed=2)
    dev_args = _to(args, torch.device("cuda"))
    assert tiles_per_image(6, 224, 224) > 1
    tiled = _triton()(*dev_args)
    assert torch.equal(tiled, apply_chains(*dev_args, tiles=1))
    _within_bar(tiled.cpu(), augment_apply_reference(*args), False, "224 px, tiled")
    compiled = torch.compile(lambda *a: torch.ops.fastorals.augment_apply_triton(*a))(*dev_args)
    assert torch.equal(tiled, compiled)


def _eager(args):
    from fastorals.augment import triton as T

    with T._GRAPHS.disabled():
        return torch.ops.fastorals.augment_apply_triton(*args)


@pytest.mark.gpu
def test_gpu_graph_replay_gives_the_eager_bytes_on_new_inputs():
    # the op replays its launches from a CUDA graph per signature: every call on new values (and
    # non-contiguous ones, and on another stream) gives the bytes of launching the kernels one by one
    from fastorals.augment import triton as T

    T._GRAPHS.clear()
    rng = random.Random(3)
    cuda = torch.device("cuda")
    for b, h, w in ((6, 224, 224), (5, 32, 32)):  # the tiled path and the one-program path
        kept = []
        for trial in range(3):
            args = list(_to(random_batch(rng, b, 3, h, w, 6, seed=10 * b + trial), cuda))
            args[-1] = True
            if trial == 2:  # strided views of the same values
                args[1] = torch.cat([args[1], args[1]], 1)[:, : args[1].shape[1]]
                args[3] = args[3].t().contiguous().t()
            out = torch.ops.fastorals.augment_apply_triton(*args)
            assert torch.equal(out, _eager(args)), (b, trial)
            kept.append((out, out.clone()))
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            out = torch.ops.fastorals.augment_apply_triton(*args)
        torch.cuda.synchronize()
        assert torch.equal(out, _eager(args))
        for out, copy in kept:  # results are the caller's own: later replays do not overwrite them
            assert torch.equal(out, copy)
    assert len(T._GRAPHS) == 2 and not T._GRAPHS.failures


@pytest.mark.gpu
def test_gpu_graph_cache_evicts_and_stays_out_of_user_captures():
    from fastorals._graphs import GraphCache
    from fastorals.augment import triton as T

    cuda = torch.device("cuda")
    cache = GraphCache(capacity=2)
    fn = lambda a, b: a * 2 + b
    for n in (3, 4, 5, 3):
        a, b = torch.randn(n, device=cuda), torch.randn(n, device=cuda)
        assert torch.equal(cache(fn, (a, b)), fn(a, b))
    assert len(cache) == 2
    cache.clear()
    with torch.inference_mode():  # captured in inference mode, replayed outside it and back in it
        a, b = torch.randn(6, device=cuda), torch.randn(6, device=cuda)
        assert torch.equal(cache(fn, (a, b)), fn(a, b))
    a, b = torch.randn(6, device=cuda), torch.randn(6, device=cuda)
    assert torch.equal(cache(fn, (a, b)), fn(a, b))
    with torch.inference_mode():
        assert torch.equal(cache(fn, (a, b)), fn(a, b))
    assert len(cache) == 1 and not cache.failures
    cache.enabled = False
    assert not cache.usable((a, b))
    cache.clear()
    assert len(cache) == 0
    # inside a user's own graph capture the op launches normally (captured into the user's graph)
    args = list(_to(random_batch(random.Random(4), 4, 3, 64, 64, 3, seed=4), cuda))
    expect = _eager(args)
    torch.ops.fastorals.augment_apply_triton(*args)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = torch.ops.fastorals.augment_apply_triton(*args)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expect)
    assert not T._GRAPHS.failures


@pytest.mark.parametrize("kernel", ["_augment_kernel", "_load_kernel", "_stats_kernel", "_stage_kernel",
                                    "_store_kernel"])
def test_kernel_compiles_for_a_cuda_target_without_fused_multiply_add(kernel):
    # Compiles to PTX without a GPU (catches what the interpreter cannot: constexpr misuse, types,
    # atomics). No product of ours may be fused into an FMA, or blends, filters, affine maps and
    # resampling would round differently from Pillow; that must hold with FMA contraction on too,
    # since torch.compile launches user kernels with it on: the FMAs compiled with contraction on
    # are exactly those of libdevice's sin (present with it off too), and no product flushes subnormals.
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastorals.augment import triton as T

    ptrs = {"img_ptr": "*u8", "ops_ptr": "*i32", "val_ptr": "*fp64", "geo_ptr": "*fp64", "crop_ptr": "*i32",
            "flip_ptr": "*u8", "cut_ptr": "*i32", "mean_ptr": "*fp32", "std_ptr": "*fp32", "buf_ptr": "*u8",
            "lut_ptr": "*i32", "out_ptr": "*fp32", "cur_ptr": "*i32", "hist_ptr": "*i32", "gsum_ptr": "*i64"}
    fn = getattr(T, kernel)
    sig = {}
    for n in inspect.signature(fn.fn).parameters:
        sig[n] = ptrs.get(n) or ("i32" if n in ("K", "C", "H", "W", "k", "p", "TILES") else
                                 "constexpr" if n in ("FLOAT_OUT", "BLOCK") else "fp32")
    consts = {n: v for n, v in (("FLOAT_OUT", True), ("BLOCK", T.BLOCK)) if n in sig}
    ptx = {}
    for fusion in (True, False):
        src = ASTSource(fn=fn, signature=sig, constexprs=consts)
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "enable_fp_fusion": fusion})
        ptx[fusion] = k.asm["ptx"]
    for code in ptx.values():
        assert "fma.rn.f32" not in code and "div.full.f32" not in code and "mul.rn.ftz" not in code
    assert ptx[True].count("fma.rn.f64") == ptx[False].count("fma.rn.f64")
    if kernel in ("_augment_kernel", "_stage_kernel"):  # Lanczos: pi as a double, not a float32 literal
        assert "3.1415926535897931" in k.asm["ttir"] and "3.1415927410125732" not in k.asm["ttir"]
