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
@pytest.mark.parametrize("chw", [(3, 9, 7), (1, 6, 5), (3, 2, 3)], ids=lambda s: "x".join(map(str, s)))
def test_each_op_matches_pil(triton_device, chw):
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
    out = _triton()(*_to(args, triton_device)).cpu()
    ref = augment_apply_reference(*args)
    for i in range(n):
        _within_bar(out[i], ref[i], exact, f"{O.OP_NAMES[ops[i]]}({vals[i]}) on {chw}")


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


@pytest.mark.slow
def test_kernel_compiles_for_a_cuda_target_without_fused_float32_multiply_add():
    # Compiles to PTX without a GPU (catches what the interpreter cannot: constexpr misuse, types);
    # no float32 FMA may appear, or blends and filters would round differently from Pillow.
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastorals.augment import triton as T

    ptrs = {"img_ptr": "*u8", "ops_ptr": "*i32", "val_ptr": "*fp64", "geo_ptr": "*fp64", "crop_ptr": "*i32",
            "flip_ptr": "*u8", "cut_ptr": "*i32", "mean_ptr": "*fp32", "std_ptr": "*fp32", "buf_ptr": "*u8",
            "lut_ptr": "*i32", "out_ptr": "*fp32"}
    sig = {}
    for n in inspect.signature(T._augment_kernel.fn).parameters:
        sig[n] = ptrs.get(n) or ("i32" if n in ("K", "C", "H", "W") else
                                 "constexpr" if n in ("FLOAT_OUT", "BLOCK") else "fp32")
    src = ASTSource(fn=T._augment_kernel, signature=sig, constexprs={"FLOAT_OUT": True, "BLOCK": T.BLOCK})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8, "enable_fp_fusion": False})
    ptx = k.asm["ptx"]
    assert "fma.rn.f32" not in ptx and "div.full.f32" not in ptx
