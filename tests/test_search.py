"""Exact blocked nearest-code search against a float64 brute force."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from vaevq.quantizers.search import nearest_code


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Run these tests with one torch thread, restored afterwards.

    nearest_code makes many small ops per call (one addmm and one torch.min per block). On a
    shared 2-core machine, torch.min(dim=...) opens an OpenMP parallel region even for a 3x1
    input, and each region then costs a scheduler slice (~8 ms, measured) instead of
    microseconds. The answers do not depend on the thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def distances64(z, codebook) -> np.ndarray:
    """(N, K) squared distances sum_j (z_ij - e_kj)^2 in float64, by direct differences."""
    z64 = np.asarray(z, dtype=np.float64)
    e64 = np.asarray(codebook, dtype=np.float64)
    out = np.empty((z64.shape[0], e64.shape[0]))
    step = max(1, 2_000_000 // max(1, e64.size))  # rows per chunk: bounded temporaries
    for r0 in range(0, z64.shape[0], step):
        out[r0 : r0 + step] = ((z64[r0 : r0 + step, None, :] - e64[None]) ** 2).sum(-1)
    return out


def brute_force(z, codebook) -> np.ndarray:
    """argmin_k of the float64 distances (numpy: first index on ties)."""
    return distances64(z, codebook).argmin(1)


# (N, K, d, code_block, row_block)
COMBOS = [
    (1, 1, 4, 1, 1),
    (1, 1, 3, 1024, 1024),
    (1, 9, 3, 4, 1),  # N = 1
    (7, 1, 5, 4, 2),  # K = 1
    (50, 37, 8, 5, 7),  # K % code_block != 0, N % row_block != 0
    (50, 37, 8, 1, 1),  # code_block = 1, row_block = 1
    (23, 41, 6, 1, 5),
    (31, 29, 4, 7, 1),
    (64, 64, 16, 64, 64),  # exact multiples
    (65, 129, 16, 64, 64),  # one past a multiple
    (63, 127, 16, 64, 64),  # one short of a multiple
    (100, 300, 32, 1024, 1024),  # code_block > K, row_block > N
    (33, 100, 2, 7, 50),
    (129, 1000, 64, 128, 32),
    (1500, 2100, 8, 1024, 1024),  # the defaults, with ragged last blocks
]


@pytest.mark.parametrize("n,k,d,code_block,row_block", COMBOS)
def test_matches_float64_brute_force(n, k, d, code_block, row_block):
    gen = torch.Generator().manual_seed(n * 7919 + k * 31 + d)
    z = torch.randn(n, d, generator=gen, dtype=torch.float64) * 1.5 + 0.3
    codebook = torch.randn(k, d, generator=gen, dtype=torch.float64)
    got = nearest_code(z, codebook, code_block=code_block, row_block=row_block)
    assert got.dtype == torch.int64
    assert got.shape == (n,)
    np.testing.assert_array_equal(got.numpy(), brute_force(z.numpy(), codebook.numpy()))


def test_default_blocks_match_brute_force():
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(1100, 12, generator=gen, dtype=torch.float64)
    codebook = torch.randn(1500, 12, generator=gen, dtype=torch.float64)
    np.testing.assert_array_equal(
        nearest_code(z, codebook).numpy(), brute_force(z.numpy(), codebook.numpy())
    )


def test_cached_codebook_norms_give_the_same_answer():
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(90, 10, generator=gen, dtype=torch.float64)
    codebook = torch.randn(77, 10, generator=gen, dtype=torch.float64)
    norms = (codebook.numpy() ** 2).sum(1)
    got = nearest_code(z, codebook, code_block=16, row_block=32,
                       codebook_sq_norms=torch.from_numpy(norms))
    np.testing.assert_array_equal(got.numpy(), brute_force(z.numpy(), codebook.numpy()))


def test_mixed_dtypes_are_computed_in_float64():
    gen = torch.Generator().manual_seed(8)
    z = torch.randn(60, 6, generator=gen, dtype=torch.float64)
    codebook = torch.randn(45, 6, generator=gen, dtype=torch.float64)
    got = nearest_code(z, codebook.float(), code_block=8, row_block=16)
    expected = brute_force(z.numpy(), codebook.float().double().numpy())
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("n,k,d,code_block,row_block",
                         [(2000, 3000, 32, 512, 256), (777, 513, 64, 100, 300)])
def test_float32_differs_only_by_rounding(n, k, d, code_block, row_block):
    gen = torch.Generator().manual_seed(n + k)
    z = torch.randn(n, d, generator=gen)
    codebook = torch.randn(k, d, generator=gen)
    # a few rows exactly halfway between two codes, so near-ties do occur
    z[:50] = 0.5 * (codebook[:50] + codebook[50:100]) + 1e-6 * torch.randn(50, d, generator=gen)
    got = nearest_code(z, codebook, code_block=code_block, row_block=row_block).numpy()
    dist = distances64(z.numpy(), codebook.numpy())
    best = dist.min(1)
    chosen = dist[np.arange(n), got]
    assert np.all(chosen <= best * (1 + 1e-5))
    assert np.mean(got == dist.argmin(1)) > 0.97


def _tie_codebook(gen, k, d, dup_at, dtype):
    """Integer-valued codebook with one vector repeated at the indices dup_at; queries
    z = v + 0.25 * {-1, 0, 1}^d: every sum is exact in float32, v is strictly the nearest."""
    codebook = torch.randint(-4, 5, (k, d), generator=gen).to(dtype)
    v = torch.randint(-4, 5, (d,), generator=gen).to(dtype)
    for i in range(k):
        while torch.equal(codebook[i], v):
            codebook[i] = torch.randint(-4, 5, (d,), generator=gen).to(dtype)
    codebook[dup_at] = v
    z = v + 0.25 * torch.randint(-1, 2, (40, d), generator=gen).to(dtype)
    return z, codebook


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("code_block", [1, 2, 4, 5, 7, 16, 37, 64])
@pytest.mark.parametrize("row_block", [1, 3, 40])
def test_exact_ties_go_to_lowest_index(dtype, code_block, row_block):
    gen = torch.Generator().manual_seed(code_block * 10 + row_block)
    dup_at = [5, 17, 18, 36]  # in different blocks for every code_block < 12
    z, codebook = _tie_codebook(gen, 37, 16, dup_at, dtype)
    got = nearest_code(z, codebook, code_block=code_block, row_block=row_block)
    assert (got == 5).all(), got.unique()
    np.testing.assert_array_equal(got.numpy(), brute_force(z.numpy(), codebook.numpy()))


def test_duplicated_random_codes_go_to_lowest_index():
    gen = torch.Generator().manual_seed(0)
    failures = []
    for dtype in (torch.float32, torch.float64):
        for k in (37, 67, 130):
            codebook = torch.randn(k, 16, generator=gen, dtype=dtype)
            v = torch.randn(16, generator=gen, dtype=dtype)
            dup_at = [3, k // 3, k // 2 + 1, k - 1]
            codebook[dup_at] = v
            z = v + 1e-3 * torch.randn(50, 16, generator=gen, dtype=dtype)
            for code_block in (1, 2, 5, 7, 16, k, 1024):
                for row_block in (1, 3, 50):
                    got = nearest_code(z, codebook, code_block=code_block, row_block=row_block)
                    if not (got == 3).all():
                        failures.append((dtype, k, code_block, row_block, got.unique().tolist()))
    assert not failures, failures[:5]


def test_empty_input_gives_empty_int64():
    got = nearest_code(torch.zeros(0, 8), torch.randn(10, 8))
    assert got.dtype == torch.int64
    assert got.shape == (0,)


@pytest.mark.parametrize(
    "z_shape,codebook_shape",
    [((8,), (10, 8)), ((2, 8), (10,)), ((2, 3, 8), (10, 8)), ((2, 8), (1, 10, 8)),
     ((2, 8), (10, 7))],
)
def test_wrong_shapes_raise(z_shape, codebook_shape):
    with pytest.raises(ValueError):
        nearest_code(torch.zeros(z_shape), torch.zeros(codebook_shape))


@pytest.mark.parametrize("code_block,row_block", [(0, 4), (4, 0), (-1, 4), (4, -2)])
def test_non_positive_blocks_raise(code_block, row_block):
    with pytest.raises(ValueError):
        nearest_code(torch.zeros(3, 2), torch.zeros(5, 2), code_block=code_block,
                     row_block=row_block)


@pytest.mark.slow
def test_large_search_spot_checked():
    """N = 8192, d = 64, K = 131072, float32; 64 random rows checked in float64."""
    gen = torch.Generator().manual_seed(2024)
    n, d, k = 8192, 64, 131072
    z = torch.randn(n, d, generator=gen)
    codebook = torch.randn(k, d, generator=gen)
    start = time.perf_counter()
    got = nearest_code(z, codebook)
    elapsed = time.perf_counter() - start
    assert got.dtype == torch.int64 and got.shape == (n,)
    assert int(got.min()) >= 0 and int(got.max()) < k

    rows = torch.randperm(n, generator=gen)[:64].numpy()
    e64 = codebook.double().numpy()
    exact = 0
    for r in rows:
        dist = ((z[r].double().numpy()[None, :] - e64) ** 2).sum(1)
        best = dist.min()
        assert dist[got[r]] <= best * (1 + 1e-5)
        exact += int(got[r] == dist.argmin())
    assert exact >= 60
    print(f"nearest_code N={n} K={k} d={d}: {elapsed:.2f} s")


def test_codebook_norms_are_cached_only_within_a_step():
    from vaevq.quantizers.base import Codebook

    torch.manual_seed(0)
    book = Codebook(50, 6, init="normal")
    z = torch.randn(2, 6, 3, 3)

    def brute(vectors):
        flat = z.permute(0, 2, 3, 1).reshape(-1, 6).double().numpy()
        return torch.from_numpy(brute_force(flat, vectors.detach().double().numpy())).view(2, 3, 3)

    # off by default: every call sees the codebook as it is, however it was changed
    first = book.squared_norms(book.vectors())
    assert book.squared_norms(book.vectors()) is not first
    with torch.no_grad():
        book.embedding.data[:10] = z.permute(0, 2, 3, 1).reshape(-1, 6)[:10]  # no version bump
    assert torch.equal(book.search(z, book.vectors(), 16), brute(book.vectors()))
    torch.testing.assert_close(book.squared_norms(book.vectors()), book.embedding.detach().pow(2).sum(1))
    # on (the trainer, between the start of a step and its optimizer step): computed once
    book.cache_norms(True)
    cached = book.squared_norms(book.vectors())
    assert book.squared_norms(book.vectors()) is cached
    assert torch.equal(book.search(z, book.vectors(), 16), brute(book.vectors()))
    book.cache_norms(False)
    optimizer = torch.optim.Adam(book.parameters(), lr=0.5, fused=True)
    book.embedding.grad = torch.randn_like(book.embedding)
    optimizer.step()
    assert torch.equal(book.search(z, book.vectors(), 16), brute(book.vectors()))
