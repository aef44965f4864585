"""Triton kernels of the excite operators; ``excite_triton`` launches them (see docs/excite_op.md).

x, shortcut, out and the gradients are contiguous in one layout (NCHW or channels_last), the launcher
sees to that, at any alignment; the small gate g and grad_g may have any strides. The sigmoid, the
products and every sum are float32, each output is rounded once. Integer arguments are not specialised
(``do_not_specialize``), so the compiled variants are exactly the dtype x constexpr combinations that
``excite_triton.specializations()`` lists. The launcher passes alignment facts as a runtime flag, set
only where every full-size tensor starts on a 16-byte boundary and the rows (NCHW) or pixels
(channels_last) do too; it selects each backward kernel's fast path: unmasked, with ``tl.multiple_of``
hints, so 16-byte vector accesses. Without it the same kernel takes its masked path, which promises
nothing about alignment. (The forward needs no flag: its full blocks start on multiples of BLOCK, and
Triton specialises each launch on its pointers' alignment.)

Forward: one program per BLOCK elements of the flat tensor, the (n, c, y, x) of each element from
multiply-shift divisions. Backward (grad_g by fixed-order sums, no atomics):

- ``excite_backward_span_kernel``, NCHW with a gate one cell wide: the rows of a plane that read gate
  row i (a band) are contiguous, and all of them read one gate value; a program takes band i of PB
  planes and sums each band in chunks of BS elements.
- ``excite_backward_band_kernel``, NCHW otherwise: a program takes band i of PB planes, walks the columns
  in chunks of BW and the band's rows in chunks of BR, sums each column over the rows, then the columns
  of each gate cell; a cell split between two chunks carries its sum over.
- ``excite_backward_cell_kernel``, channels_last: a program takes one gate cell (or a block of its rows)
  and BC channels and sums over the cell's pixels; when the cell's rows are split into blocks, the
  blocks' sums go to a float32 buffer that ``excite_backward_cell_sum_kernel`` adds up in order.
"""
import triton
import triton.language as tl


def _jit(fn):
    """triton.jit, with the integer arguments (annotated tl.int32 / tl.int64) not specialised on their values."""
    ints = [name for name, kind in fn.__annotations__.items() if kind in (tl.int32, tl.int64)]
    return triton.jit(do_not_specialize=ints)(fn)


@triton.jit
def _divmod(a, magic, shift, d):
    """(a // d, a % d) for 0 <= a < 2**31 by a multiply and a shift (``divider(d)`` in excite_triton)."""
    q = ((tl.umulhi(a.to(tl.uint32), magic.to(tl.uint32)) + a.to(tl.uint32)) >> shift.to(tl.uint32)).to(tl.int32)
    return q, a - q * d


@triton.jit
def _nearest(dst, scale, n_in):
    """Source index of destination index ``dst`` for F.interpolate(mode="nearest"), as ATen computes it:
    min(floor(float(dst) * scale), n_in - 1) in float32, scale = float(n_in) / n_out."""
    return tl.minimum(tl.floor(tl.cast(dst, tl.float32) * scale).to(tl.int32), n_in - 1)


@triton.jit
def _nearest_first(src, scale, n_in, n_out):
    """The first destination index whose source index is >= src (n_out if none), so that the destination
    indices reading source index s are [first(s), first(s + 1)). An estimate, corrected with _nearest."""
    d = tl.minimum(tl.maximum(tl.ceil(tl.cast(src, tl.float32) / scale).to(tl.int32), 0), n_out)
    while _nearest(d - 1, scale, n_in) >= src:  # at d = 0 this reads index -1, whose source is -1 < src
        d -= 1
    while (d < n_out) & (_nearest(d, scale, n_in) < src):
        d += 1
    return d


@triton.jit
def _sigmoid(logit):
    return 1.0 / (1.0 + tl.exp(-logit.to(tl.float32)))


# ----------------------------------------------------------------------------------------------- forward


@triton.jit
def _forward_block(x_ptr, g_ptr, shortcut_ptr, out_ptr, base, numel, has_shortcut, C, H, W, h, w, HW,
                   g_sn, g_sc, g_sh, g_sw, scale_h, scale_w, magic_c, shift_c, magic_w, shift_w, magic_h, shift_h,
                   magic_hw, shift_hw, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr, MASKED: tl.constexpr):
    r = tl.arange(0, BLOCK)
    if CHANNELS_LAST:  # element (n, y, x, c): ((n * H + y) * W + x) * C + c
        pixel0 = base // C
        k, c = _divmod((base - pixel0 * C).to(tl.int32) + r, magic_c, shift_c, C)
        row, col = _divmod(pixel0.to(tl.int32) + k, magic_w, shift_w, W)
        n, y = _divmod(row, magic_h, shift_h, H)
    else:  # element (n, c, y, x): (n * C + c) * HW + y * W + x
        plane0 = base // HW
        k, t = _divmod((base - plane0 * HW).to(tl.int32) + r, magic_hw, shift_hw, HW)
        y, col = _divmod(t, magic_w, shift_w, W)
        n, c = _divmod(plane0.to(tl.int32) + k, magic_c, shift_c, C)
    mask = r < numel - base if MASKED else None
    cell = n * g_sn + c * g_sc + _nearest(y, scale_h, h) * g_sh + _nearest(col, scale_w, w) * g_sw
    gate = _sigmoid(tl.load(g_ptr + cell, mask=mask))
    out = tl.load(x_ptr + base + r, mask=mask).to(tl.float32) * gate
    if has_shortcut != 0:
        out += tl.load(shortcut_ptr + base + r, mask=mask).to(tl.float32)
        out = tl.where(out < 0, 0.0, out)  # relu, NaN kept
    tl.store(out_ptr + base + r, out.to(out_ptr.dtype.element_ty), mask=mask)


@_jit
def excite_forward_kernel(x_ptr, g_ptr, shortcut_ptr, out_ptr, numel: tl.int64, has_shortcut: tl.int32,
                          C: tl.int32, H: tl.int32, W: tl.int32, h: tl.int32, w: tl.int32, HW: tl.int32,
                          g_sn: tl.int32, g_sc: tl.int32, g_sh: tl.int32, g_sw: tl.int32,
                          scale_h: tl.float32, scale_w: tl.float32, magic_c: tl.int64, shift_c: tl.int32,
                          magic_w: tl.int64, shift_w: tl.int32, magic_h: tl.int64, shift_h: tl.int32,
                          magic_hw: tl.int64, shift_hw: tl.int32,
                          CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    """out = x * sigmoid(up(g)), or relu(that + shortcut), over elements [pid * BLOCK, pid * BLOCK + BLOCK)."""
    base = tl.program_id(0).to(tl.int64) * BLOCK
    if numel - base >= BLOCK:  # a full block: unmasked, so that loads and stores are 16-byte vectors
        _forward_block(x_ptr, g_ptr, shortcut_ptr, out_ptr, base, numel, has_shortcut, C, H, W, h, w, HW,
                       g_sn, g_sc, g_sh, g_sw, scale_h, scale_w, magic_c, shift_c, magic_w, shift_w, magic_h,
                       shift_h, magic_hw, shift_hw, CHANNELS_LAST, BLOCK, False)
    else:
        _forward_block(x_ptr, g_ptr, shortcut_ptr, out_ptr, base, numel, has_shortcut, C, H, W, h, w, HW,
                       g_sn, g_sc, g_sh, g_sw, scale_h, scale_w, magic_c, shift_c, magic_w, shift_w, magic_h,
                       shift_h, magic_hw, shift_hw, CHANNELS_LAST, BLOCK, True)


# ------------------------------------------------------------------------------ backward, shared pieces


@triton.jit
def _backward_tile(grad_out_ptr, out_ptr, x_ptr, grad_x_ptr, grad_shortcut_ptr, offsets, mask, gate, acc,
                   has_out):
    """grad_x = m * gate and acc += m * x, with m = grad_out (residual: where out > 0, which is also
    grad_shortcut), over one tile of the full-size tensors."""
    m = tl.load(grad_out_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if has_out != 0:
        m = tl.where(tl.load(out_ptr + offsets, mask=mask, other=0.0).to(tl.float32) > 0, m, 0.0)
        tl.store(grad_shortcut_ptr + offsets, m.to(grad_shortcut_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_x_ptr + offsets, (m * gate).to(grad_x_ptr.dtype.element_ty), mask=mask)
    return acc + m * tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _grad_g(sums, gate):
    """d loss / d g from the sum of m * x over a cell and the cell's gate sigmoid(g)."""
    return sums * gate * (1.0 - gate)


# ------------------------------------------------------------------- backward, NCHW, gates one cell wide


@triton.jit
def _span_chunk(grad_out_ptr, out_ptr, x_ptr, grad_x_ptr, grad_shortcut_ptr, starts, plane_ok, pos, length,
                gate, acc, has_out, BS: tl.constexpr, FAST: tl.constexpr):
    """Elements [pos, pos + BS) of the bands. FAST: all inside the bands, which start on 16-byte boundaries
    (so that the accesses are unmasked 16-byte vectors)."""
    offsets = starts + (pos + tl.arange(0, BS))[None, :]
    if FAST:  # VEC is a local constexpr: triton 3.3 (torch 2.7) returns a jit helper's result as a tensor
        VEC: tl.constexpr = 128 // x_ptr.dtype.element_ty.primitive_bitwidth  # elements per 16 bytes
        offsets = tl.multiple_of(offsets, [1, VEC])
        mask = plane_ok
    else:
        mask = plane_ok & ((pos + tl.arange(0, BS)) < length)[None, :]
    return _backward_tile(grad_out_ptr, out_ptr, x_ptr, grad_x_ptr, grad_shortcut_ptr, offsets, mask, gate, acc,
                          has_out)


@_jit
def excite_backward_span_kernel(grad_out_ptr, out_ptr, x_ptr, g_ptr, grad_x_ptr, grad_shortcut_ptr, grad_g_ptr,
                                has_out: tl.int32, aligned: tl.int32, planes: tl.int32, C: tl.int32,
                                H: tl.int32, W: tl.int32, h: tl.int32, HW: tl.int32,
                                g_sn: tl.int32, g_sc: tl.int32, g_sh: tl.int32,
                                gg_sn: tl.int32, gg_sc: tl.int32, gg_sh: tl.int32, scale_h: tl.float32,
                                PB: tl.constexpr, BS: tl.constexpr):
    """Band i = program_id(1) of planes [program_id(0) * PB, + PB): rows [first(i), first(i + 1)), one
    contiguous span of the plane with one gate value."""
    i = tl.program_id(1)
    plane = tl.program_id(0) * PB + tl.arange(0, PB)
    plane_ok = (plane < planes)[:, None]
    n = plane // C
    cell = n * g_sn + (plane - n * C) * g_sc + i * g_sh
    gate = _sigmoid(tl.load(g_ptr + cell, mask=plane < planes, other=0.0))[:, None]
    y0 = _nearest_first(i, scale_h, h, H)
    length = (_nearest_first(i + 1, scale_h, h, H) - y0) * W
    starts = (plane.to(tl.int64) * HW + y0 * W)[:, None]
    acc = tl.zeros([PB, BS], dtype=tl.float32)
    # the chunks of the fast path; tl.where, since the conditional expression `a if c else 0` fails to compile
    # here with triton 3.5 (torch 2.9): an assertion in its TritonGPUCoalesce pass
    fast = tl.where(aligned != 0, length // BS * BS, 0)
    for pos in range(0, fast, BS):
        acc = _span_chunk(grad_out_ptr, out_ptr, x_ptr, grad_x_ptr, grad_shortcut_ptr, starts, plane_ok, pos, length,
                          gate, acc, has_out, BS, True)
    for pos in range(fast, length, BS):
        acc = _span_chunk(grad_out_ptr, out_ptr, x_ptr, grad_x_ptr, grad_shortcut_ptr, starts, plane_ok, pos, length,
                          gate, acc, has_out, BS, False)
    grad = _grad_g(tl.sum(acc, axis=1), tl.reshape(gate, [PB]))
    tl.store(grad_g_ptr + n * gg_sn + (plane - n * C) * gg_sc + i * gg_sh,
             grad.to(grad_g_ptr.dtype.element_ty), mask=plane < planes)


# ------------------------------------------------------------------------------ backward, NCHW, general


@triton.jit
def _band_chunk(grad_out_ptr, out_ptr, x_ptr, grad_x_ptr, grad_shortcut_ptr, starts, plane_ok, y0, y1, W, col,
                gate, has_out, PB: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr, FAST: tl.constexpr):
    """Columns `col` (BW of them) of the band's rows [y0, y1): grad_x (and grad_shortcut), and the sum of
    m * x over the rows per column ([PB, BW]). FAST: the columns are all inside the map and rows start on
    16-byte boundaries (unmasked 16-byte vectors along the rows)."""
    acc = tl.zeros([PB, BR, BW], dtype=tl.float32)
    for y in range(y0, y1, BR):
        rows = y + tl.arange(0, BR)
        row_starts = starts + (rows * W)[None, :, None]
        mask = plane_ok & (rows < y1)[None, :, None]
        if FAST:
            VEC: tl.constexpr = 128 // x_ptr.dtype.element_ty.primitive_bitwidth  # elements per 16 bytes
            row_starts = tl.multiple_of(row_starts, [VEC, VEC, VEC])
        else:
            mask = mask & (col < W)[None, None, :]
        acc = _backward_tile(grad_out_ptr, out_ptr, x_ptr, grad_x_ptr, grad_shortcut_ptr,
                             row_starts + col[None, None, :], mask, gate, acc, has_out)
    return tl.sum(acc, axis=1)


@_jit
def excite_backward_band_kernel(grad_out_ptr, out_ptr, x_ptr, g_ptr, grad_x_ptr, grad_shortcut_ptr, grad_g_ptr,
                                has_out: tl.int32, aligned: tl.int32, planes: tl.int32, C: tl.int32,
                                H: tl.int32, W: tl.int32, h: tl.int32, w: tl.int32, HW: tl.int32,
                                g_sn: tl.int32, g_sc: tl.int32, g_sh: tl.int32, g_sw: tl.int32,
                                gg_sn: tl.int32, gg_sc: tl.int32, gg_sh: tl.int32, gg_sw: tl.int32,
                                scale_h: tl.float32, scale_w: tl.float32,
                                PB: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr):
    """Band i = program_id(1) of planes [program_id(0) * PB, + PB), column chunk by column chunk. The sums
    of a chunk's columns are added per gate cell, cell after cell; a cell that continues into the next
    chunk carries its partial sum there."""
    i = tl.program_id(1)
    plane = tl.program_id(0) * PB + tl.arange(0, PB)
    plane_ok = (plane < planes)[:, None]
    n = plane // C
    gate_row = n * g_sn + (plane - n * C) * g_sc + i * g_sh
    grad_row = n * gg_sn + (plane - n * C) * gg_sc + i * gg_sh
    y0 = _nearest_first(i, scale_h, h, H)
    y1 = _nearest_first(i + 1, scale_h, h, H)
    starts = (plane.to(tl.int64) * HW)[:, None, None]
    carry = tl.zeros([PB], dtype=tl.float32)
    for q in range(0, W, BW):
        col = q + tl.arange(0, BW)
        j = _nearest(col, scale_w, w)  # each column's gate cell
        gate = _sigmoid(tl.load(g_ptr + gate_row[:, None] + j[None, :] * g_sw, mask=plane_ok & (col < W)[None, :],
                                other=0.0))
        if (aligned != 0) & (q + BW <= W):
            sums = _band_chunk(grad_out_ptr, out_ptr, x_ptr, grad_x_ptr, grad_shortcut_ptr, starts,
                               plane_ok[:, :, None], y0, y1, W, col, gate[:, None, :], has_out, PB, BR, BW, True)
        else:
            sums = _band_chunk(grad_out_ptr, out_ptr, x_ptr, grad_x_ptr, grad_shortcut_ptr, starts,
                               plane_ok[:, :, None], y0, y1, W, col, gate[:, None, :], has_out, PB, BR, BW, False)
        # The chunk's columns belong to cells j0 .. j_last; the last one may continue in the next chunk.
        j0 = _nearest(q, scale_w, w)
        last = tl.minimum(q + BW, W) - 1
        j_last = _nearest(last, scale_w, w)
        open_cell = (last + 1 < W) & (_nearest(last + 1, scale_w, w) == j_last)
        carry_out = tl.zeros([PB], dtype=tl.float32)
        for cell in range(j0, j_last + 1):
            cell_sum = tl.sum(tl.where((j == cell)[None, :], sums, 0.0), axis=1)
            cell_sum = tl.where(cell == j0, cell_sum + carry, cell_sum)
            done = (cell < j_last) | (open_cell == 0)
            store = (plane < planes) & done
            cell_gate = _sigmoid(tl.load(g_ptr + gate_row + cell * g_sw, mask=store, other=0.0))
            tl.store(grad_g_ptr + grad_row + cell * gg_sw, _grad_g(cell_sum, cell_gate).to(grad_g_ptr.dtype.element_ty),
                     mask=store)
            carry_out = tl.where(done, carry_out, cell_sum)
        carry = carry_out


# ---------------------------------------------------------------------------- backward, channels_last


@triton.jit
def _cell_pixels(grad_out_ptr, out_ptr, x_ptr, grad_x_ptr, grad_shortcut_ptr, n, ya, x0, cw, pixels, H, W, C, c,
                 gate, has_out, BQ: tl.constexpr, BC: tl.constexpr, FAST: tl.constexpr):
    """The cell's pixels (rows from ya, columns [x0, x0 + cw)) in chunks of BQ, channels `c`: grad_x, and
    the sum of m * x over the pixels ([BC]). FAST: the channels are all below C and pixels start on 16-byte
    boundaries (unmasked 16-byte vectors along the channels)."""
    acc = tl.zeros([BQ, BC], dtype=tl.float32)
    for q in range(0, pixels, BQ):
        p = q + tl.arange(0, BQ)
        r = p // cw
        pixel_starts = (((n * H + ya + r) * W + x0 + p - r * cw).to(tl.int64) * C)[:, None]
        mask = (p < pixels)[:, None]
        if FAST:
            VEC: tl.constexpr = 128 // x_ptr.dtype.element_ty.primitive_bitwidth  # elements per 16 bytes
            pixel_starts = tl.multiple_of(pixel_starts, [VEC, VEC])
        else:
            mask = mask & (c < C)[None, :]
        acc = _backward_tile(grad_out_ptr, out_ptr, x_ptr, grad_x_ptr, grad_shortcut_ptr, pixel_starts + c[None, :],
                             mask, gate, acc, has_out)
    return tl.sum(acc, axis=0)


@_jit
def excite_backward_cell_kernel(grad_out_ptr, out_ptr, x_ptr, g_ptr, grad_x_ptr, grad_shortcut_ptr, grad_g_ptr,
                                partial_ptr, has_out: tl.int32, aligned: tl.int32, C: tl.int32, H: tl.int32,
                                W: tl.int32, h: tl.int32, w: tl.int32, row_blocks: tl.int32,
                                rows_per_block: tl.int32, g_sn: tl.int32, g_sc: tl.int32, g_sh: tl.int32,
                                g_sw: tl.int32, gg_sn: tl.int32, gg_sc: tl.int32, gg_sh: tl.int32, gg_sw: tl.int32,
                                scale_h: tl.float32, scale_w: tl.float32, BQ: tl.constexpr, BC: tl.constexpr):
    """Gate cell (n, i, j), block `rb` of its rows, channels [program_id(1) * BC, + BC), with
    program_id(0) = ((n * h + i) * w + j) * row_blocks + rb. With one row block the cell's gradient is
    final; otherwise the block's sum goes to partial[program_id(0), c]."""
    t = tl.program_id(0)
    cell = t // row_blocks
    rb = t - cell * row_blocks
    n = cell // (h * w)
    i = cell // w - n * h
    j = cell - cell // w * w
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    c_ok = c < C
    gate = _sigmoid(tl.load(g_ptr + n * g_sn + c * g_sc + i * g_sh + j * g_sw, mask=c_ok, other=0.0))
    y0 = _nearest_first(i, scale_h, h, H)
    ya = y0 + rb * rows_per_block
    yb = tl.minimum(ya + rows_per_block, _nearest_first(i + 1, scale_h, h, H))
    x0 = _nearest_first(j, scale_w, w, W)
    cw = _nearest_first(j + 1, scale_w, w, W) - x0
    pixels = tl.maximum(yb - ya, 0) * cw
    if (aligned != 0) & ((tl.program_id(1) + 1) * BC <= C):
        sums = _cell_pixels(grad_out_ptr, out_ptr, x_ptr, grad_x_ptr, grad_shortcut_ptr, n, ya, x0, cw, pixels, H, W,
                            C, c, gate[None, :], has_out, BQ, BC, True)
    else:
        sums = _cell_pixels(grad_out_ptr, out_ptr, x_ptr, grad_x_ptr, grad_shortcut_ptr, n, ya, x0, cw, pixels, H, W,
                            C, c, gate[None, :], has_out, BQ, BC, False)
    if row_blocks == 1:
        tl.store(grad_g_ptr + n * gg_sn + c * gg_sc + i * gg_sh + j * gg_sw,
                 _grad_g(sums, gate).to(grad_g_ptr.dtype.element_ty), mask=c_ok)
    else:
        tl.store(partial_ptr + t.to(tl.int64) * C + c, sums, mask=c_ok)


@_jit
def excite_backward_cell_sum_kernel(partial_ptr, g_ptr, grad_g_ptr, cells: tl.int32, row_blocks: tl.int32,
                                    C: tl.int32, h: tl.int32, w: tl.int32,
                                    g_sn: tl.int32, g_sc: tl.int32, g_sh: tl.int32, g_sw: tl.int32,
                                    gg_sn: tl.int32, gg_sc: tl.int32, gg_sh: tl.int32, gg_sw: tl.int32,
                                    BK: tl.constexpr, BC: tl.constexpr):
    """grad_g of cells [program_id(0) * BK, + BK), channels [program_id(1) * BC, + BC): the cells' row-block
    sums in partial added in block order."""
    cell = tl.program_id(0) * BK + tl.arange(0, BK)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    mask = (cell < cells)[:, None] & (c < C)[None, :]
    sums = tl.zeros([BK, BC], dtype=tl.float32)
    for rb in range(0, row_blocks):
        sums += tl.load(partial_ptr + ((cell * row_blocks + rb).to(tl.int64) * C)[:, None] + c[None, :], mask=mask,
                        other=0.0)
    n = cell // (h * w)
    i = cell // w - n * h
    j = cell - cell // w * w
    where = (n * g_sn + i * g_sh + j * g_sw)[:, None] + c[None, :] * g_sc
    gate = _sigmoid(tl.load(g_ptr + where, mask=mask, other=0.0))
    tl.store(grad_g_ptr + (n * gg_sn + i * gg_sh + j * gg_sw)[:, None] + c[None, :] * gg_sc,
             _grad_g(sums, gate).to(grad_g_ptr.dtype.element_ty), mask=mask)
