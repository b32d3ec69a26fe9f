"""The DSA op: its torch reference on the CPU (the oracle), its registration for torch.compile,
the kernel source compiling for sm_90, and (CUDA + CuPy only) the kernel against the reference."""
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from streamedit_core.model import dsa
from streamedit_core.model.attention import attention, dsa_block_mask
from streamedit_core.model.dsa import block_lists, expand_block_mask, lists_to_block_mask

op = torch.ops.streamedit.dsa_attention


def _qkv(B, Lq, Lk, H, D, *, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(B, Lq, H, D, generator=g, device=device, dtype=torch.float32)
    k, v = (torch.randn(B, Lk, H, D, generator=g, device=device, dtype=torch.float32) for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _random_lists(B, H, nq, nk, p, *, device="cpu", seed=0, empty_rows=False):
    g = torch.Generator(device="cpu").manual_seed(seed)
    mask = torch.rand(B, H, nq, nk, generator=g) < p
    if not empty_rows:
        mask[..., torch.arange(nq), torch.arange(nq) % nk] = True
    return block_lists(mask.to(device))


def _plain(q, k, v, mask):
    """Softmax attention with a token mask [B, H, Lq, Lk] in float64; rows with no key -> 0."""
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    p = s.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", p, v.double())


def test_reference_is_plain_attention_on_the_listed_blocks():
    q, k, v = _qkv(2, 45, 70, 3, 8)
    counts, indices = _random_lists(2, 3, 6, 9, 0.4, empty_rows=True)
    counts[0, 1, 2] = 0  # a query block keeping nothing
    mask = expand_block_mask(lists_to_block_mask(counts, indices), 8, 45, 70)
    out = op(q, k, v, counts, indices, 8)
    assert out.shape == (2, 45, 3, 8) and out.is_contiguous()
    torch.testing.assert_close(out, _plain(q, k, v, mask))
    assert torch.all(out[0, 16:24, 1] == 0)


def test_dsa_backend_runs_the_op_on_the_mask_rule():
    q, k, v = _qkv(1, 40, 40, 2, 8)
    kw = dict(block_size=8, density=0.4, frame_tokens=10)
    mask = expand_block_mask(dsa_block_mask(q, k, **kw), 8, 40, 40)
    torch.testing.assert_close(attention(q, k, v, "dsa", **kw), _plain(q, k, v, mask))


def test_op_registration_and_fake_tensor():
    q, k, v = _qkv(1, 20, 20, 2, 8, dtype=torch.float32)
    counts, indices = _random_lists(1, 2, 3, 3, 0.5)
    torch.library.opcheck(op, (q, k, v, counts, indices, 8))


def test_backward_is_the_masked_attention_gradient():
    """Issue 49, defect 1: the op has an autograd formula (gradcheck in float64, empty rows
    included), checked by opcheck with inputs that require grad, and compiled with its backward."""
    q, k, v = (x.requires_grad_() for x in _qkv(1, 11, 14, 1, 3))
    counts, indices = _random_lists(1, 1, 3, 4, 0.5, empty_rows=True)
    assert torch.autograd.gradcheck(lambda q, k, v: op(q, k, v, counts, indices, 4), (q, k, v))
    q, k, v = (x.requires_grad_() for x in _qkv(2, 21, 30, 2, 4))
    counts, indices = _random_lists(2, 2, 3, 4, 0.5, empty_rows=True)
    counts[1, 0, 1] = 0  # a query block keeping nothing: zero output, zero gradient
    mask = expand_block_mask(lists_to_block_mask(counts, indices), 8, 21, 30)
    grad = torch.randn(2, 21, 2, 4, dtype=torch.float64)
    got = torch.autograd.grad(op(q, k, v, counts, indices, 8), (q, k, v), grad)
    want = torch.autograd.grad(_plain(q, k, v, mask), (q, k, v), grad)
    for g, w, name in zip(got, want, "qkv"):
        torch.testing.assert_close(g, w, msg=name)
    assert torch.all(got[0][1, 8:16, 0] == 0)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    torch.library.opcheck(op, (q32, k32, v32, counts, indices, 8),  # aot: the compile test below
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_torch_compile_with_backward_through_the_op():
    q, k, v = (x.requires_grad_() for x in _qkv(1, 48, 48, 2, 8, dtype=torch.float32))
    kw = dict(block_size=16, density=0.5, frame_tokens=16)

    def f(q, k, v):
        return attention(q * 2, k, v, "dsa", **kw).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    want = torch.autograd.grad(f(q, k, v), (q, k, v))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_torch_compile_fullgraph_around_the_op():
    q, k, v = _qkv(1, 48, 48, 2, 8, dtype=torch.float32)
    kw = dict(block_size=16, density=0.5, frame_tokens=16)

    def f(q, k, v):
        return attention(q * 2, k, v, "dsa", **kw) + 1

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v))


def test_kernel_not_used_on_cpu_or_when_disabled(monkeypatch):
    q = torch.zeros(1, 8, 1, 64, dtype=torch.bfloat16)
    assert not dsa.kernel_supports(q, 64)
    monkeypatch.setenv("STREAMEDIT_DSA_KERNEL", "0")
    assert not dsa.kernel_enabled()


def test_bad_inputs():
    q, k, v = _qkv(1, 20, 30, 2, 8)
    counts, indices = _random_lists(1, 2, 3, 4, 0.5)
    with pytest.raises(ValueError, match=r"kv_counts \[B, H, nq\] = \[1, 2, 3\] and kv_indices "
                                         r"\[B, H, nq, nk\] = \[1, 2, 3, 4\] for blocks of 8; got \[1, 2, 3\] and \[1, 2, 3, 3\]"):
        op(q, k, v, counts, indices[..., :3], 8)
    with pytest.raises(ValueError, match=r"q \(1, 20, 2, 8\), k \(1, 30, 2, 8\), v \(1, 30, 2, 4\)"):
        op(q, k, v[..., :4], counts, indices, 8)
    with pytest.raises(ValueError, match="integer tensors, got torch.float32"):
        op(q, k, v, counts.float(), indices, 8)
    with pytest.raises(ValueError, match="block_size must be > 0, got 0"):
        op(q, k, v, counts, indices, 0)
    with pytest.raises(ValueError, match="share a dtype, got torch.float64, torch.float32"):
        op(q, k.float(), v, counts, indices, 8)
    with pytest.raises(ValueError, match=r"one device, got \['cpu', 'meta'\]"):  # (a meta input
        dsa.check_inputs(q, k, v, counts.to("meta"), indices, 8)  # dispatches to the fake)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_kernel_source_compiles_for_sm90_without_spills(tmp_path):
    """Every instantiation builds for the H100 with no register spills (ptxas -v)."""
    inst = ", ".join(f"(void*)&dsa::dsa_fwd<{d}, {b}, {r}>" for d, b, r in dsa.VARIANTS)
    src = tmp_path / "inst.cu"
    src.write_text(f'#include "{dsa.KERNEL_SOURCE}"\nvoid* dsa_kernels[] = {{{inst}}};\n')
    r = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", "-c", str(src), "-o", str(tmp_path / "x.o"),
                        "-Xptxas", "-v"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("0 bytes spill stores, 0 bytes spill loads") == len(dsa.VARIANTS) == 6, r.stderr


def _kernel_parameters() -> list[str]:
    """The C types of dsa_fwd's parameters, read from the kernel source."""
    src = dsa.KERNEL_SOURCE.read_text()
    params = src[src.index("dsa_fwd(") + len("dsa_fwd("):].split(")", 1)[0]
    return [" ".join(p.replace("__restrict__", "").split()[:-1]) for p in params.split(",")]


def test_launch_arguments_match_the_kernel_signature(monkeypatch):
    """What `launch` hands CuPy, checked against the parameter list in the .cu: CuPy passes a
    Python int as 8 bytes and numpy scalars at their own size, so a mismatch is silent garbage."""
    import contextlib

    import numpy as np

    calls = []
    monkeypatch.setattr(dsa, "_kernel", lambda dev, d, b, r: lambda *a, **kw: calls.append((a, kw)))
    monkeypatch.setattr(dsa, "_cupy_stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    B, Lq, Lk, H, D, block = 2, 300, 200, 3, 128, 128
    qkv = torch.zeros(B, Lq, 3, H, D, dtype=torch.bfloat16)
    q, k, v = qkv[:, :, 0], qkv[:, :Lk, 1], qkv[:, :Lk, 2]
    counts, indices = _random_lists(B, H, 3, 2, 0.5)
    out = dsa.launch(q, k, v, counts, indices, block)
    (grid, threads, args), kw = calls[0]
    assert grid == (3, H, B) and threads == (2 * block,) and out.shape == (B, Lq, H, D)
    assert kw == {"shared_mem": (block + 4 * 64) * D * 2}
    monkeypatch.setenv("STREAMEDIT_DSA_ROWS", "64")  # two CTAs of 64 rows per block of 128
    dsa.launch(q, k, v, counts, indices, block)
    (grid, threads, _), kw = calls[1]
    assert grid == (6, H, B) and threads == (128,) and kw == {"shared_mem": (64 + 4 * 64) * D * 2}
    monkeypatch.setenv("STREAMEDIT_DSA_ROWS", "32")
    with pytest.raises(ValueError, match="STREAMEDIT_DSA_ROWS must be 64 or 128, got '32'"):
        dsa.launch(q, k, v, counts, indices, block)
    expected = {"const u16*": int, "u16*": int, "const int*": int, "int": np.int32,
                "long long": np.int64, "float": np.float32}
    params = _kernel_parameters()
    assert len(args) == len(params) == 24
    assert [type(a) for a in args] == [expected[p] for p in params]
    assert args[0] == q.data_ptr() and args[3] == out.data_ptr()  # the strided view as it is
    assert [int(a) for a in args[6:11]] == [Lq, Lk, H, 3, 2]
    assert [int(a) for a in args[11:14]] == list(q.stride()[:3]) == [Lq * 3 * H * D, 3 * H * D, D]
    assert [int(a) for a in args[20:23]] == list(out.stride()[:3])
    assert args[23] == pytest.approx(math.log2(math.e) / math.sqrt(D))


EMULATED = [  # D, BLOCK, ROWS, B, H, Lq, Lk, mask: every instantiation, partial blocks, Lq != Lk
    (64, 64, 64, 1, 1, 300, 300, "random"), (64, 128, 128, 1, 1, 300, 333, "random"),
    (128, 64, 64, 1, 1, 200, 333, "random"), (128, 128, 128, 1, 2, 300, 300, "random"),
    (128, 128, 128, 1, 1, 64, 1000, "full"), (128, 128, 128, 1, 1, 256, 256, "diagonal"),
    (64, 64, 64, 2, 1, 130, 200, "empty_row"),
    (128, 128, 64, 1, 1, 300, 300, "random"), (64, 128, 64, 1, 1, 40, 200, "random"),
]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """tests/dsa_emulator.cpp built with AddressSanitizer: the kernel source run on the CPU."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    exe = tmp_path_factory.mktemp("emu") / "dsa_emulator"
    src = Path(__file__).with_name("dsa_emulator.cpp")
    r = subprocess.run(["g++", "-std=c++20", "-O1", "-fsanitize=address", "-pthread",
                        "-Wno-unknown-pragmas", "-o", str(exe), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return exe


@pytest.mark.slow
def test_kernel_source_under_cpu_emulation_matches_attention(emulator):
    """The kernel's index math, pipeline and bounds, with its PTX primitives emulated on the CPU
    (see tests/dsa_emulator.cpp); the same bf16 error bound as on the GPU."""
    for cfg in EMULATED:
        r = subprocess.run([str(emulator), *map(str, cfg), "0"], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, f"{cfg}: {r.stderr[-2000:]}"
        err = float(r.stdout.split()[1])
        assert err <= 2e-2, f"{cfg}: max abs error {err}"


# --- CUDA -------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available() or dsa.cupy_or_none() is None,
                          reason="needs CUDA and CuPy")


def _check_kernel(q, k, v, counts, indices, block):
    assert dsa.kernel_supports(q, block)
    out = op(q, k, v, counts, indices, block)
    ref = dsa.reference(q.float(), k.float(), v.float(), counts, indices, block)
    err = (out.float() - ref).abs().max().item()
    assert out.dtype == torch.bfloat16 and out.shape == q.shape and err <= 2e-2, f"max abs error {err}"
    return out


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("head_dim", dsa.HEAD_DIMS)
@pytest.mark.parametrize("block", dsa.BLOCK_SIZES)
@pytest.mark.parametrize("lq,lk", [(512, 512), (300, 300), (200, 333), (64, 1000)])
@pytest.mark.parametrize("kind", ["random", "full", "diagonal"])
def test_kernel_matches_reference(head_dim, block, lq, lk, kind, monkeypatch):
    B, H = 2, 3
    q, k, v = _qkv(B, lq, lk, H, head_dim, dtype=torch.bfloat16, device="cuda", seed=lq + lk)
    nq, nk = math.ceil(lq / block), math.ceil(lk / block)
    if kind == "random":
        counts, indices = _random_lists(B, H, nq, nk, 0.3, device="cuda", seed=head_dim + block)
    else:
        mask = torch.ones(nq, nk, dtype=torch.bool) if kind == "full" else torch.eye(nq, nk, dtype=torch.bool)
        mask[torch.arange(nq), torch.arange(nq) % nk] = True
        counts, indices = block_lists(mask.expand(B, H, nq, nk).cuda())
    for rows in ("", "64"):  # one CTA per block, and (blocks of 128) two of 64 rows
        monkeypatch.setenv("STREAMEDIT_DSA_ROWS", rows)
        _check_kernel(q, k, v, counts, indices, block)


@pytest.mark.gpu
@cuda
def test_kernel_strided_inputs_large_values_and_empty_rows():
    """q, k, v as views into one qkv projection; large logits (softmax stability); a query block
    with no key block writes zeros."""
    B, L, H, D, block = 1, 700, 4, 128, 128
    qkv = torch.randn(B, L, 3, H, D, device="cuda", dtype=torch.bfloat16)
    qkv[:, :, :2] *= 4  # logits of std 16
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    counts, indices = _random_lists(B, H, 6, 6, 0.5, device="cuda", seed=3)
    counts[0, 2, 1] = 0
    out = _check_kernel(q, k, v, counts, indices, block)
    assert torch.all(out[0, 128:256, 2] == 0)


@pytest.mark.gpu
@cuda
def test_kernel_2b_shape_no_host_sync_cuda_graph_and_compile():
    """The 2b preset's self-attention (16 heads x 128, 2 frames of 1024 tokens here), through
    the dsa backend: no host sync, replayable in a CUDA graph, inside torch.compile."""
    B, L, H, D = 1, 2048, 16, 128
    q, k, v = _qkv(B, L, L, H, D, dtype=torch.bfloat16, device="cuda", seed=7)
    kw = dict(block_size=128, density=0.25, frame_tokens=1024)
    counts, indices = block_lists(dsa_block_mask(q, k, **kw))
    ref = _check_kernel(q, k, v, counts, indices, 128)
    torch.testing.assert_close(attention(q, k, v, "dsa", **kw), ref, atol=0, rtol=0)

    torch.cuda.set_sync_debug_mode("error")
    try:
        attention(q, k, v, "dsa", **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        attention(q, k, v, "dsa", **kw)  # warm-up off the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = attention(q, k, v, "dsa", **kw)
    q.mul_(-1)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, attention(q, k, v, "dsa", **kw), atol=0, rtol=0)

    compiled = torch.compile(lambda q, k, v: attention(q, k, v, "dsa", **kw), fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), attention(q, k, v, "dsa", **kw), atol=2e-2, rtol=0)
