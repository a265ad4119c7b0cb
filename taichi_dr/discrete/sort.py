"""Stable sort by key, and the gather that applies its permutation, with a backward pass.

``argsort(keys)`` returns the stable ascending order of a 1-D array of int32, int64,
float32 or float64 keys — equal keys keep their input order, exactly as NumPy's
``np.argsort(keys, kind="stable")`` (−0.0 equals +0.0; NaN keys are refused). It is an LSD
radix sort of 8-bit digits built from one stable **counting pass**: the input is cut into
blocks of ``BLOCK`` elements, each block counts its digits (one thread per block, serial
inside), an exclusive prefix sum over the (digit, block) counts in digit-major order gives
every block its output offsets, and each block scatters its elements in order. Digits in
which no two keys differ are skipped. ``counting_pass`` is public: with ``mask=-1`` it sorts
by a key that is already a bucket number (the splatter's tile binning is one such pass).

``sort_by_key(keys, values)`` returns ``(keys[perm], values[perm], perm)``. Its derivative:
the permutation is a piecewise-constant function of the keys — it changes only where two
keys cross — so the sorted values are ``values[perm]`` with the permutation held fixed, and
their gradient is the upstream gradient **scattered back through the permutation**
(``grad_values[perm[i]] = grad_sorted[i]``); the same holds for float keys. Away from ties
this is the exact derivative. At a tie the sorted output is continuous but not
differentiable, and the scatter gives the one-sided derivative of the side that the
stable order picked (equal keys ordered by index).

Works on NumPy arrays, torch tensors (``sort_by_key`` is then a differentiable torch
function) and ``ti.ndarray``\\ s (:func:`gather` records a hand-written adjoint on a
``ti.ad.Tape``); outputs have the kind and device of the input (:mod:`taichi_dr.arrays`).
"""

import taichi as ti

from .. import arrays, backend
from ..errors import UserError

BLOCK = 2048  # elements per block of a counting pass / prefix sum (one thread each)
SERIAL_SCAN = 1 << 16  # prefix sums up to this length run in one serial kernel
RADIX_BITS = 8
MAX_HIST = 1 << 22  # cap on (buckets × blocks) counters of one pass

I32 = ti.types.ndarray(dtype=ti.i32, ndim=1)


def _one_block_per_thread() -> int:
    """``block_dim`` of the loops over blocks (each serial inside): 1 on the CPU, whose
    range-for otherwise hands ≥ 512 consecutive iterations to one thread; 64 elsewhere
    (Vulkan refuses 1)."""
    return 1 if backend.current_arch() == "cpu" else 64


# ------------------------------------------------------------------------ prefix sums
@ti.kernel
def _scan_serial(a: I32, out: I32, n: ti.i32, total: I32):
    for _ in range(1):  # locals live inside the loop: Vulkan loses kernel-scope accumulators
        run = 0
        for i in range(n):
            v = a[i]
            out[i] = run
            run += v
        total[0] = run


@ti.kernel
def _block_sums(a: I32, n: ti.i32, block: ti.i32, sums: I32):
    ti.loop_config(block_dim=ti.static(_one_block_per_thread()))
    for b in range((n + block - 1) // block):
        s = 0
        for i in range(b * block, ti.min(n, (b + 1) * block)):
            s += a[i]
        sums[b] = s


@ti.kernel
def _scan_sums(sums: I32, nb: ti.i32):
    for _ in range(1):
        run = 0
        for b in range(nb):
            v = sums[b]
            sums[b] = run
            run += v
        sums[nb] = run


@ti.kernel
def _block_scan(a: I32, out: I32, n: ti.i32, block: ti.i32, sums: I32):
    ti.loop_config(block_dim=ti.static(_one_block_per_thread()))
    for b in range((n + block - 1) // block):
        run = sums[b]
        for i in range(b * block, ti.min(n, (b + 1) * block)):
            v = a[i]
            out[i] = run
            run += v


def exclusive_scan(a, n: int, out=None) -> int:
    """Exclusive prefix sum of the int32 array ``a[:n]`` into ``out`` (default: in place);
    returns the total."""
    out = a if out is None else out
    if n <= SERIAL_SCAN:  # one launch: cheaper than three for short arrays
        total = arrays.empty(a, (1,), "i32")
        _scan_serial(a, out, n, total)
        return int(total[0])
    nb = max(1, -(-n // BLOCK))
    sums = arrays.empty(a, (nb + 1,), "i32")
    _block_sums(a, n, BLOCK, sums)
    _scan_sums(sums, nb)
    _block_scan(a, out, n, BLOCK, sums)
    return int(sums[nb])


# ------------------------------------------------------------------------ counting pass
@ti.kernel
def _histogram(
    keys: ti.types.ndarray(ndim=1),
    n: ti.i32,
    shift: ti.i32,
    mask: ti.i32,
    block: ti.i32,
    nb: ti.i32,
    buckets: ti.i32,
    hist: I32,
):
    """hist[d · nb + b] = how many keys of block b have digit d (zeroed here)."""
    ti.loop_config(block_dim=ti.static(_one_block_per_thread()))
    for b in range(nb):
        for d in range(buckets):
            hist[d * nb + b] = 0
        for i in range(b * block, ti.min(n, (b + 1) * block)):
            d = ti.cast((keys[i] >> shift) & mask, ti.i32)
            hist[d * nb + b] = hist[d * nb + b] + 1  # the block owns its column: no atomic


@ti.kernel
def _scatter(
    keys: ti.types.ndarray(ndim=1),
    values: I32,
    n: ti.i32,
    shift: ti.i32,
    mask: ti.i32,
    block: ti.i32,
    nb: ti.i32,
    offsets: I32,
    keys_out: ti.types.ndarray(ndim=1),
    values_out: I32,
    with_keys: ti.template(),
):
    ti.loop_config(block_dim=ti.static(_one_block_per_thread()))
    for b in range(nb):
        for i in range(b * block, ti.min(n, (b + 1) * block)):
            j = ti.cast((keys[i] >> shift) & mask, ti.i32) * nb + b
            pos = offsets[j]
            offsets[j] = pos + 1
            values_out[pos] = values[i]
            if ti.static(with_keys):
                keys_out[pos] = keys[i]


@ti.kernel
def _bucket_starts(offsets: I32, nb: ti.i32, buckets: ti.i32, starts: I32):
    for d in range(buckets + 1):
        starts[d] = 0 if d == 0 else offsets[d * nb - 1]  # after the scatter: end of d − 1


def counting_pass(
    keys, values, n, shift, mask, buckets, values_out, keys_out=None, with_starts=True
):
    """One stable counting-sort pass of ``values[:n]`` (int32) by the digit
    ``(keys >> shift) & mask`` (all digits < ``buckets``; ``mask=-1`` uses the key itself)
    into ``values_out`` (and ``keys_out`` when given). Returns ``starts`` (int32,
    ``buckets + 1``; None unless ``with_starts``): bucket d fills
    ``[starts[d], starts[d + 1])``."""
    nb = max(1, min(-(-n // BLOCK), MAX_HIST // max(buckets, 1)))
    block = max(1, -(-n // nb))
    counts = arrays.empty(values, (buckets * nb + 1,), "i32")
    _histogram(keys, n, shift, mask, block, nb, buckets, counts)
    exclusive_scan(counts, buckets * nb)
    with_keys = keys_out is not None
    _scatter(
        keys, values, n, shift, mask, block, nb, counts, keys_out if with_keys else keys,
        values_out, with_keys,
    )  # fmt: skip
    if not with_starts:
        return None
    starts = arrays.empty(values, (buckets + 1,), "i32")
    _bucket_starts(counts, nb, buckets, starts)
    return starts


# ------------------------------------------------------------------------ argsort
@ti.kernel
def _sortable(
    keys: ti.types.ndarray(ndim=1),
    out: ti.types.ndarray(ndim=1),
    n: ti.i32,
    wide: ti.template(),
    is_float: ti.template(),
):
    """Keys → integers whose *unsigned* order is the keys' order (−0.0 → +0.0)."""
    t = ti.i64 if ti.static(wide) else ti.i32
    top = ti.cast(1, t) << (63 if ti.static(wide) else 31)
    for i in range(n):
        if ti.static(is_float):
            x = keys[i]
            if x == 0:
                x = 0
            b = ti.bit_cast(x, t)
            out[i] = b ^ ((b >> (63 if ti.static(wide) else 31)) | top)
        else:
            out[i] = keys[i] ^ top


@ti.kernel
def _varying_bits(keys: ti.types.ndarray(ndim=1), n: ti.i32, acc: ti.types.ndarray(ndim=1)):
    """acc[0] |= every key, acc[1] &= every key (acc starts at 0, −1)."""
    for i in range(n):
        ti.atomic_or(acc[0], keys[i])
        ti.atomic_and(acc[1], keys[i])


@ti.kernel
def _count_nan(keys: ti.types.ndarray(ndim=1), n: ti.i32, bad: I32):
    for i in range(n):
        if ti.math.isnan(keys[i]):
            ti.atomic_add(bad[0], 1)


@ti.kernel
def _iota(a: I32, n: ti.i32):
    for i in range(n):
        a[i] = i


KEY_DTYPES = ("i32", "i64", "f32", "f64")


def _check_keys(keys, check_nan: bool) -> str:
    dt = arrays.dtype_name(keys)
    if len(keys.shape) != 1:
        raise UserError(f"sort keys must be a 1-D array, got shape {tuple(keys.shape)}")
    if dt not in KEY_DTYPES:
        raise UserError(f"sort keys of dtype {dt} are not supported; use int32/64 or float32/64")
    if check_nan and dt[0] == "f" and keys.shape[0]:
        bad = arrays.zeros(keys, (1,), "i32")
        _count_nan(keys, keys.shape[0], bad)
    if check_nan and dt[0] == "f" and keys.shape[0] and int(bad[0]):
        raise UserError("sort keys contain NaN, which has no place in an order; remove them")
    return dt


def argsort(keys, check_nan: bool = True):
    """Stable ascending order of ``keys`` (see the module docstring): an int32 array
    ``perm`` with ``keys[perm]`` sorted and equal keys in index order. ``check_nan=False``
    skips the NaN scan for keys known to be finite."""
    backend.ensure_init()
    dt = _check_keys(keys, check_nan)
    n = int(keys.shape[0])
    perm = arrays.empty(keys, (n,), "i32")
    if n == 0:
        return perm
    wide = dt in ("i64", "f64")
    kt = "i64" if wide else "i32"
    k0, k1 = arrays.empty(keys, (n,), kt), arrays.empty(keys, (n,), kt)
    _sortable(keys, k0, n, wide, dt[0] == "f")
    acc = arrays.empty(keys, (2,), kt)
    acc[0], acc[1] = 0, -1
    _varying_bits(k0, n, acc)
    varying = (int(acc[0]) ^ int(acc[1])) & ((1 << (64 if wide else 32)) - 1)
    _iota(perm, n)
    p1 = arrays.empty(keys, (n,), "i32")
    radix = 1 << RADIX_BITS
    for shift in range(0, 64 if wide else 32, RADIX_BITS):
        if (varying >> shift) & (radix - 1):
            counting_pass(k0, perm, n, shift, radix - 1, radix, p1, k1, with_starts=False)
            k0, k1, perm, p1 = k1, k0, p1, perm
    return perm


# ------------------------------------------------------------------------ gather / scatter
@ti.kernel
def _gather_rows(
    src: ti.types.ndarray(ndim=2), perm: I32, dst: ti.types.ndarray(ndim=2), n: ti.i32
):
    for i, j in ti.ndrange(n, src.shape[1]):
        dst[i, j] = src[perm[i], j]


@ti.kernel
def _scatter_rows(
    grad_dst: ti.types.ndarray(ndim=2), perm: I32, grad_src: ti.types.ndarray(ndim=2), n: ti.i32
):
    for i, j in ti.ndrange(n, grad_dst.shape[1]):
        grad_src[perm[i], j] = grad_src[perm[i], j] + grad_dst[i, j]  # perm is one-to-one


def _rows(a):
    """``a`` as a 2-D (n, m) array (a view where possible)."""
    if arrays.is_taichi(a):
        if len(a.shape) != 2:
            raise UserError(f"ti.ndarray rows to gather must be 2-D (n, m), got {a.shape}")
        return a
    return a.reshape(a.shape[0], -1)


@ti.ad.grad_replaced
def gather(src, perm, dst):
    """``dst[i] = src[perm[i]]`` for 2-D (n, m) arrays. On a ``ti.ad.Tape`` its adjoint
    scatters ``dst.grad`` back into ``src.grad`` through the permutation."""
    _gather_rows(src, perm, dst, perm.shape[0])


@ti.ad.grad_for(gather)
def _gather_grad(src, perm, dst):
    _scatter_rows(dst.grad, perm, src.grad, perm.shape[0])


def scatter(grad_sorted, perm):
    """The adjoint of :func:`gather`: ``grad[perm[i]] = grad_sorted[i]`` (any shape
    (n, ...); same kind as ``grad_sorted``)."""
    g = _rows(grad_sorted)
    out = arrays.zeros(g, g.shape, arrays.dtype_name(g))
    _scatter_rows(g, perm, out, perm.shape[0])
    return out.reshape(grad_sorted.shape)


def _gathered(values, perm):
    v = _rows(values)
    dst = arrays.empty(v, v.shape, arrays.dtype_name(v))
    _gather_rows(v, perm, dst, perm.shape[0])
    return dst.reshape(values.shape)


def sort_by_key(keys, values):
    """``(keys[perm], values[perm], perm)`` with ``perm = argsort(keys)``; ``values`` has
    shape (n, ...). For torch tensors the result is differentiable in ``values`` and in
    float ``keys`` (gradients scattered through the permutation, module docstring)."""
    if keys.shape[0] != values.shape[0]:
        raise UserError(
            f"sort_by_key: {keys.shape[0]} keys but {values.shape[0]} values; give one per key"
        )
    if arrays.is_torch(keys):
        return _torch_sort_by_key().apply(keys, values)
    perm = argsort(keys)
    return _gathered(keys, perm), _gathered(values, perm), perm


_TORCH_FUNCTION = []  # built on the first torch call: torch is imported only for its callers


def _torch_sort_by_key():
    """``sort_by_key`` as a ``torch.autograd.Function`` (its backward scatters the sorted
    gradients back through the permutation)."""
    if not _TORCH_FUNCTION:
        import torch

        class SortByKey(torch.autograd.Function):
            @staticmethod
            def forward(ctx, keys, values):
                perm = argsort(keys.detach())
                ctx.save_for_backward(perm)
                ctx.mark_non_differentiable(perm)
                return _gathered(keys.detach(), perm), _gathered(values.detach(), perm), perm

            @staticmethod
            def backward(ctx, grad_keys, grad_values, _grad_perm):
                (perm,) = ctx.saved_tensors
                needs = ctx.needs_input_grad
                gk = scatter(grad_keys.contiguous(), perm) if needs[0] else None
                gv = scatter(grad_values.contiguous(), perm) if needs[1] else None
                return gk, gv

        _TORCH_FUNCTION.append(SortByKey)
    return _TORCH_FUNCTION[0]
