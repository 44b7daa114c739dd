"""Exact, memory-bounded nearest-code search.

argmin_k ||z - e_k||^2 = argmin_k (||e_k||^2 - 2 z . e_k): the ||z||^2 term is constant per
row and is never formed. The N x K score matrix is never held whole: rows are processed in
blocks of ``row_block`` and codes in blocks of ``code_block``; each block's scores are written
by ``addmm`` into one reused buffer and reduced to a running (min, argmin) at once, while the
block is still in cache. Extra memory is about row_block * code_block * 4 bytes plus O(N).
Ties go to the lowest index: on equal scores the first block wins and argmin inside a block
is first; identical codebook rows, whose scores BLAS may round differently depending on their
column position, are mapped to the first of their copies afterwards.
"""

from __future__ import annotations

import torch

DEFAULT_ROW_BLOCK = 1024
_INT_OF = {torch.float32: torch.int32, torch.float64: torch.int64,
           torch.float16: torch.int16, torch.bfloat16: torch.int16}
DEFAULT_CODE_BLOCK = 1024


@torch.no_grad()
def nearest_code(
    z: torch.Tensor,
    codebook: torch.Tensor,
    *,
    code_block: int = DEFAULT_CODE_BLOCK,
    row_block: int = DEFAULT_ROW_BLOCK,
    codebook_sq_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Index of the nearest codebook row for every row of ``z``.

    z: (N, d); codebook: (K, d); returns (N,) int64. Computed in the wider of the two dtypes
    (at least float32). ``codebook_sq_norms`` (K,) may be passed to reuse a cached ||e_k||^2.
    """
    if z.dim() != 2 or codebook.dim() != 2:
        raise ValueError(f"nearest_code expects z (N, d) and codebook (K, d); got "
                         f"{tuple(z.shape)} and {tuple(codebook.shape)}")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"dimension mismatch: z has d={z.shape[1]}, codebook d={codebook.shape[1]}")
    if code_block <= 0 or row_block <= 0:
        raise ValueError("code_block and row_block must be positive")
    dtype = torch.promote_types(torch.promote_types(z.dtype, codebook.dtype), torch.float32)
    z = z.to(dtype)
    codebook = codebook.to(dtype)
    n, k = z.shape[0], codebook.shape[0]
    if codebook_sq_norms is None:
        codebook_sq_norms = codebook.pow(2).sum(1)
    codebook_sq_norms = codebook_sq_norms.to(dtype)

    indices = torch.empty(n, dtype=torch.long, device=z.device)
    if n == 0:
        return indices
    code_block = min(code_block, k)
    row_block = min(row_block, n)
    scores = torch.empty(row_block, code_block, dtype=dtype, device=z.device)
    best_val = torch.empty(row_block, dtype=dtype, device=z.device)
    best_idx = torch.empty(row_block, dtype=torch.long, device=z.device)
    blk_val = torch.empty(row_block, dtype=dtype, device=z.device)
    blk_idx = torch.empty(row_block, dtype=torch.long, device=z.device)
    for r0 in range(0, n, row_block):
        r1 = min(r0 + row_block, n)
        rows = r1 - r0
        zr = z[r0:r1]
        bv, bi = best_val[:rows], best_idx[:rows]
        for c0 in range(0, k, code_block):
            c1 = min(c0 + code_block, k)
            out = scores[:rows, : c1 - c0]
            # out = ||e||^2 - 2 z e^T, written in place
            torch.addmm(codebook_sq_norms[c0:c1], zr, codebook[c0:c1].t(), alpha=-2.0, out=out)
            if c0 == 0:
                torch.min(out, dim=1, out=(bv, bi))
                continue
            v, i = blk_val[:rows], blk_idx[:rows]
            torch.min(out, dim=1, out=(v, i))
            better = v < bv  # strict: on a tie the earlier (lower-index) block wins
            bv.copy_(torch.where(better, v, bv))
            bi.copy_(torch.where(better, i + c0, bi))
        indices[r0:r1] = bi
    return _first_copy(codebook)[indices]


def _first_copy(codebook: torch.Tensor) -> torch.Tensor:
    """(K,) map from each code to the lowest index holding an identical row.

    Rows are grouped by an integer hash of their bits (exact, independent of summation
    order; a 1-D stable sort, cheap next to the search); a code is remapped only when its
    row equals the group's first row exactly.
    """
    k = codebook.shape[0]
    identity = torch.arange(k, device=codebook.device)
    bits = codebook.contiguous().view(_INT_OF[codebook.dtype]).to(torch.int64)
    gen = torch.Generator().manual_seed(12345)
    coeffs = torch.randint(1, 2**62, (codebook.shape[1],), generator=gen) * 2 + 1
    keys = (bits * coeffs.to(codebook.device)).sum(1)  # wraps modulo 2^64: exact
    sorted_keys, order = torch.sort(keys, stable=True)
    starts = torch.ones(k, dtype=torch.bool, device=codebook.device)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    if bool(starts.all()):
        return identity  # no two rows share a key: no duplicates
    group = torch.cumsum(starts.long(), 0) - 1
    first = order[starts][group]  # stable sort: each group's first member has the lowest index
    mapping = identity.clone()
    mapping[order] = first
    same = (codebook[mapping] == codebook).all(1)
    return torch.where(same, mapping, identity)
