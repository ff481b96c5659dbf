"""Prototype lookups of a row-aligned packed layout against a float gather, graph mode.

Standalone (no keras_mpe codec): per-bit-width row tables of random codes, built in
numpy, looked up in a `tf.function` without XLA (what `serving_default` runs). Layout
of the prototype: the rows of each bit-width `b` form one uint8 table
`[rows of width b, D * b / 8]`; a row is the bytes of its power-of-two bit planes
(`PLANES`, e.g. 6 = 4 + 2), high plane first; within a plane of `p` bits and `n`
bytes, value `s * n + j` sits in bits `[s * p, (s + 1) * p)` of byte `j`, so every
code is extracted by a shift and a mask by scalars. Per group (128 contiguous id
ranges at a frequency-shaped mix of 0..6 bits): its first id, its partition (the
index of its bit-width, 0 for 0 bits) and the shift from id to row of its width table.

The lookup: ids -> group (`tf.searchsorted`) -> partition and local row (two gathers
from `[G]` tables) -> ids split per bit-width (`tf.dynamic_partition`) -> one row
gather per bit-width -> codes (shifts and masks) -> `(code - 2**(b-1)) * step + offset`
(a multiply and an add: exact with step sizes of 16 significant bits) -> rows put back
in id order. Variants (all timed, interleaved in one process, medians of `--repeats`):

- `stitch`: decode as above, put back with `tf.dynamic_stitch` (whose indices a GPU
  keeps in host memory);
- `scatter`: put back by concatenating the pieces and gathering them in id order (the
  order from a `tf.scatter_nd` of the positions, int64: GPU-resident);
- `tile`: values in natural order (value `d` in byte `d * p // 8`), each byte repeated
  `8 / p` times with `tf.tile`, then shifted by a `[D]` row of shifts (a measured
  loser; not checked against numpy);
- `matmul`: natural order; one matmul spreads the bytes to `byte / 2**s` and
  `byte / 2**(s+p)`, a floor, a second matmul subtracts and joins the planes;
- `blocks`: `matmul` per block of 8 values, rows stored as `D / 8` blocks of `b` bytes;
- `codebook`: `stitch`'s layout (the package's format 2), each plane decoded by one
  gather of whole bytes from a float32 `[256, 8 / p]` codebook that holds each byte's
  fields at their place value, the centring `- 2**(b-1)` in the top plane and the step
  folded in, then a transpose into value order; planes summed, `+ offset`;
- `codebook_natural`: the same codebooks on the natural order (a layout change: value
  `d` of a plane in byte `d * p // 8`, as `matmul` reads), no transpose;
- `codebook16`: `codebook_natural` two bytes at a time (a uint16 `tf.bitcast` of each
  pair indexes a `[65536, 16 / p]` codebook), half the gather indices (D a multiple
  of 16);
- `unique`: `scatter` on the distinct ids of the batch only (`tf.unique` first; the
  put-back gather takes each id's distinct slot), so that the routing, row gathers
  and decodes run once per distinct id;
- `floor`: not a decode (the rows' first bytes broadcast to `[m, D]`): the routing and
  the row gathers alone, the bound on what any decode can gain;
- `unique_floor`: `floor` on the distinct ids, as `unique` runs them: the package's
  graph path without its decode;
- `dedupe`: the distinct ids alone (`tf.unique`, a float per distinct id broadcast to
  `[u, D]`, the put-back gather), no routing and no decode: the bound on any lookup
  that decodes each distinct id once and puts the rows back;
- `package` (with `--package`): keras_mpe's lookup, `keras_mpe.lookup.lookup_packed`
  (format 2: this layout, `stitch`'s decode, `scatter`'s put-back; under XLA the
  `select` form), at the same bits per group (the results file's `format1` column
  was this option on the format-1 lookup of its day, `--format1`);
- `float`: `tf.gather` of a float32 `[V, D]` variable.

`--variants a,b` times those (and `float`) in graph mode; the default is `stitch`,
`scatter`, `tile`, `matmul` and `blocks`, and the others are `codebook`,
`codebook_natural`, `codebook16`, `unique`, `floor`, `unique_floor` and `dedupe`.
Ids: 26 per example, Zipf(1.2) ranked by frequency, or uniform over `[0, V)` with
`--uniform`. `--mlp` appends to every variant the MLP of the end-to-end benchmark
(26 fields, flatten, 256-128-1, random weights): an estimate of the end-to-end ratio
without exporting.
`--xla` compiles with `jit_compile=True` and times only `float`, `package`, `select`
(every bit-width gathered for every id, the id's own selected: XLA has no dynamic
shapes) and `select_codebook` (`select` decoding as `codebook` does). Before timing, each checked
variant's output for a few ids (out-of-range ones too) is compared with a numpy
decode of its layout.

    python benchmarks/packed_layout_prototype.py --input_dims 1e5,1e6 --dims 16,32,64 \
        --batches 64,512,4096 --package
    python benchmarks/packed_layout_prototype.py --mlp
    python benchmarks/packed_layout_prototype.py --xla --package --dims 16,64

Results: `benchmarks/results/serving-layout-prototype-2026-12-06.md`; the codebook
variants: `benchmarks/results/serving-e2e-codebook-2026-12-06.md`.
"""

import argparse
import time

import numpy as np
import tensorflow as tf

PLANES = {1: (1,), 2: (2,), 3: (2, 1), 4: (4,), 5: (4, 1), 6: (4, 2), 7: (4, 2, 1), 8: (8,)}
FIELDS = 26


def make_layout(rng: np.random.Generator, input_dim: int, dim: int, groups: int = 128) -> dict:
    """Random codes in the prototype layout, groups of equal size, frequent ids first."""
    rank = np.arange(groups) / groups
    bits = np.round(6 * (1 - rank) ** 3 + rng.normal(scale=0.5, size=groups))
    bits = np.clip(bits, 0, 6).astype(np.int32)
    first_ids = (np.arange(groups) * input_dim // groups).astype(np.uint32)
    rows = np.diff(np.append(first_ids.astype(np.int64), input_dim))
    widths = sorted(set(bits.tolist()) - {0})
    first_local = np.zeros(groups, np.int64)
    tables = {}
    for b in widths:
        members = np.flatnonzero(bits == b)
        first_local[members] = np.concatenate([[0], np.cumsum(rows[members])[:-1]])
        count = int(rows[members].sum())
        tables[b] = rng.integers(0, 256, size=(count, dim * b // 8), dtype=np.uint8)
    partition_of_bits = np.zeros(9, np.int32)
    partition_of_bits[widths] = np.arange(1, len(widths) + 1)
    return {
        "input_dim": input_dim,
        "bits": bits,
        "first_ids": first_ids,
        "partition": partition_of_bits[bits],
        "delta": (first_local - first_ids.astype(np.int64)).astype(np.int32),
        "widths": widths,
        "tables": tables,
        "steps": {b: np.float32(2.0**-b) for b in widths},
        "offset": (rng.normal(size=dim) * 0.01).astype(np.float32),
    }


def decode_fields(row_bytes: tf.Tensor, p: int) -> tf.Tensor:
    """uint8 `[m, n]` bytes of a `p`-bit plane -> uint8 `[m, n * 8 / p]` codes, value
    `s * n + j` from bits `[s * p, (s + 1) * p)` of byte `j`."""
    if p == 8:
        return row_bytes
    mask = np.uint8(2**p - 1)
    fields = [tf.bitwise.bitwise_and(row_bytes, mask)]
    fields += [
        tf.bitwise.bitwise_and(tf.bitwise.right_shift(row_bytes, np.uint8(s)), mask)
        for s in range(p, 8 - p, p)
    ]
    fields.append(tf.bitwise.right_shift(row_bytes, np.uint8(8 - p)))
    return tf.concat(fields, axis=1)


def decode_tile(row_bytes: tf.Tensor, p: int) -> tf.Tensor:
    """uint8 `[m, n]` -> `[m, n * 8 / p]`, value `d` in byte `d * p // 8`: `tf.tile`
    and a shift by a row of constants."""
    if p == 8:
        return row_bytes
    per_byte = 8 // p
    count = row_bytes.shape[1] * per_byte
    repeated = tf.reshape(tf.tile(row_bytes[:, :, None], [1, 1, per_byte]), [-1, count])
    shifts = np.tile(np.arange(0, 8, p, dtype=np.uint8), count // per_byte)
    return tf.bitwise.bitwise_and(tf.bitwise.right_shift(repeated, shifts), np.uint8(2**p - 1))


def decode_row(row_bytes: tf.Tensor, b: int, dim: int, decode) -> tf.Tensor:
    """uint8 `[m, D * b / 8]` rows of width `b` -> uint8 `[m, D]` codes."""
    codes, start, low_bits = None, 0, b
    for p in PLANES[b]:
        width = dim * p // 8
        plane = decode(row_bytes[:, start : start + width], p)
        low_bits -= p
        plane = tf.bitwise.left_shift(plane, np.uint8(low_bits)) if low_bits else plane
        codes = plane if codes is None else tf.bitwise.bitwise_or(codes, plane)
        start += width
    return codes


def decode_matmul(row_bytes: tf.Tensor, b: int, dim: int) -> tf.Tensor:
    """uint8 `[m, D * b / 8]` rows of width `b`, value `d` of a `p`-bit plane in bits
    `[d * p % 8, ...)` of its byte `d * p // 8` (natural order) -> float32 `[m, D]`
    codes: one matmul spreads and scales the bytes (`byte / 2**s`, `byte / 2**(s+p)`),
    a floor, and a second matmul takes `floor(byte / 2**s) - 2**p floor(byte / 2**(s+p))`
    and joins the planes. Every product and partial sum is an integer below 2**11 or
    a power-of-two scaling of a byte: exact in float32 (and under TF32)."""
    spread, join = [], []
    start, low_bits = 0, b
    for p in PLANES[b]:
        low_bits -= p
        for d in range(dim):
            byte, shift = start + d * p // 8, d * p % 8
            column = np.zeros(dim * b // 8, np.float32)
            column[byte] = 2.0**-shift
            spread.append(column)
            join.append((d, 2.0**low_bits))
            if shift + p < 8:
                column = np.zeros(dim * b // 8, np.float32)
                column[byte] = 2.0 ** -(shift + p)
                spread.append(column)
                join.append((d, -(2.0 ** (p + low_bits))))
        start += dim * p // 8
    spread_matrix = np.stack(spread, axis=1)
    join_matrix = np.zeros((len(join), dim), np.float32)
    for row, (d, weight) in enumerate(join):
        join_matrix[row, d] = weight
    scaled = tf.matmul(tf.cast(row_bytes, tf.float32), spread_matrix)
    return tf.matmul(tf.floor(scaled), join_matrix)


def block_matrices(b: int) -> tuple[np.ndarray, np.ndarray]:
    """`(spread, join)` of `decode_blocks` for one block of 8 values at `b` bits."""
    spread, join = [], []
    start, low_bits = 0, b
    for p in PLANES[b]:
        low_bits -= p
        for e in range(8):
            byte, shift = start + e * p // 8, e * p % 8
            for extra, weight in ((0, 2.0**low_bits), (p, -(2.0 ** (p + low_bits)))):
                if extra and shift + p == 8:
                    continue  # the top field of a byte: floor(byte / 2**8) is 0
                column = np.zeros(b, np.float32)
                column[byte] = 2.0 ** -(shift + extra)
                spread.append(column)
                join.append((e, weight))
        start += p
    join_matrix = np.zeros((len(join), 8), np.float32)
    for row, (e, weight) in enumerate(join):
        join_matrix[row, e] = weight
    return np.stack(spread, axis=1), join_matrix


def decode_blocks(row_bytes: tf.Tensor, b: int, dim: int) -> tf.Tensor:
    """uint8 `[m, D * b / 8]` rows of `D / 8` blocks of `b` bytes (8 values each: the
    bytes of each bit plane in turn, high plane first, values in natural order) ->
    float32 `[m, D]` codes, by `decode_matmul`'s two matmuls applied per block."""
    spread, join = block_matrices(b)
    blocks = tf.reshape(tf.cast(row_bytes, tf.float32), [-1, b])
    codes = tf.matmul(tf.floor(tf.matmul(blocks, spread)), join)
    return tf.reshape(codes, [-1, dim])


def codebooks(b: int, step: float) -> list[np.ndarray]:
    """Per bit plane of width `b` (high plane first), the float32 `[256, 8 / p]`
    codebook of `decode_codebook`: entry `[byte, s]` is the field `s` of `byte`
    (bits `[s p, (s + 1) p)`) at its place value, the top plane less `2**(b-1)`, times
    `step`. Every entry and every sum of one entry per plane is an integer below 2**8
    in magnitude times `step` (16 significant bits): exact."""
    books, low_bits = [], b
    for p in PLANES[b]:
        low_bits -= p
        shifts = np.arange(0, 8, p)
        fields = (np.arange(256)[:, None] >> shifts) & (2**p - 1)
        book = (fields << low_bits).astype(np.float64)
        if low_bits + p == b:
            book -= 2 ** (b - 1)
        books.append((book * step).astype(np.float32))
    return books


def decode_codebook(row_bytes: tf.Tensor, b: int, dim: int, step: float) -> tf.Tensor:
    """uint8 `[m, D * b / 8]` rows of width `b` (`decode_fields`' order) -> float32
    `[m, D]` values less the offset, `(code - 2**(b-1)) * step`: per plane one gather
    of whole bytes from its codebook (`codebooks`), `[m, n, 8 / p]` values, put in
    value order (`s * n + j`) by a transpose; the planes summed."""
    indices = tf.cast(row_bytes, tf.int64)
    values, start = None, 0
    for p, book in zip(PLANES[b], codebooks(b, step)):
        width = dim * p // 8
        plane = tf.gather(book, indices[:, start : start + width])
        if p < 8:
            plane = tf.reshape(tf.transpose(plane, [0, 2, 1]), [-1, dim])
        else:
            plane = tf.reshape(plane, [-1, dim])
        values = plane if values is None else values + plane
        start += width
    return values


def decode_codebook_natural(row_bytes: tf.Tensor, b: int, dim: int, step: float) -> tf.Tensor:
    """`decode_codebook` on the natural order (value `d` of a plane in bits
    `[d p % 8, ...)` of its byte `d p // 8`, as `decode_matmul` reads): the gathered
    `[m, n, 8 / p]` values are in value order already, no transpose."""
    indices = tf.cast(row_bytes, tf.int64)
    values, start = None, 0
    for p, book in zip(PLANES[b], codebooks(b, step)):
        width = dim * p // 8
        plane = tf.reshape(tf.gather(book, indices[:, start : start + width]), [-1, dim])
        values = plane if values is None else values + plane
        start += width
    return values


def decode_codebook16(row_bytes: tf.Tensor, b: int, dim: int, step: float) -> tf.Tensor:
    """`decode_codebook_natural` two bytes at a time: each pair of a plane's bytes read
    as one little-endian uint16 (`tf.bitcast`, no copy) indexes a `[65536, 16 / p]`
    codebook (256 KB to 4 MB), half the gather indices. D a multiple of 16."""
    values, start = None, 0
    for p, book in zip(PLANES[b], codebooks(b, step)):
        width = dim * p // 8
        pairs = tf.reshape(row_bytes[:, start : start + width], [-1, width // 2, 2])
        indices = tf.cast(tf.bitcast(pairs, tf.uint16), tf.int64)
        pair_book = np.concatenate([np.tile(book, (256, 1)), np.repeat(book, 256, axis=0)], 1)
        plane = tf.reshape(tf.gather(pair_book, indices), [-1, dim])
        values = plane if values is None else values + plane
        start += width
    return values


def decode_nothing(row_bytes: tf.Tensor, b: int, dim: int, step: float) -> tf.Tensor:
    """Not a decode: the rows' first bytes as floats, broadcast to `[m, D]` (`floor`:
    what the routing and the row gathers cost alone, the bound on any decode's gain)."""
    return tf.broadcast_to(
        tf.cast(row_bytes[:, :1], tf.float32), tf.stack([tf.shape(row_bytes)[0], dim])
    )


CODEBOOKS = (decode_codebook, decode_codebook_natural, decode_codebook16, decode_nothing)


def make_lookup(layout: dict, dim: int, variables: dict, decode, restore: str):
    first_ids = tf.constant(layout["first_ids"])
    partition_table = tf.constant(layout["partition"])
    delta_table = tf.constant(layout["delta"])
    widths = layout["widths"]
    offset = tf.constant(layout["offset"])
    input_dim = layout["input_dim"]

    def lookup(ids: tf.Tensor) -> tf.Tensor:
        flat = tf.cast(tf.reshape(ids, [-1]), tf.uint32)
        if restore == "unique":  # each distinct id once; `index` maps the ids to them
            flat, index = tf.unique(flat, out_idx=tf.int64)
        valid = flat < input_dim
        flat = tf.where(valid, flat, tf.zeros_like(flat))
        slot = tf.searchsorted(first_ids, flat, side="right", out_type=tf.int32) - 1
        partition = tf.where(valid, tf.gather(partition_table, slot), 0)
        local = tf.cast(flat, tf.int32) + tf.gather(delta_table, slot)
        count = len(widths) + 1
        locals_ = tf.dynamic_partition(local, partition, count)
        positions = tf.dynamic_partition(tf.range(tf.size(flat)), partition, count)
        pieces = [tf.zeros([tf.size(positions[0]), dim])]
        for k, b in enumerate(widths, start=1):
            rows = tf.gather(variables[b], locals_[k])
            if decode in CODEBOOKS:
                pieces.append(decode(rows, b, dim, layout["steps"][b]) + offset)
                continue
            if decode in (decode_matmul, decode_blocks):
                codes = decode(rows, b, dim)
            else:
                codes = tf.cast(decode_row(rows, b, dim, decode), tf.float32)
            centered = codes - 2.0 ** (b - 1)
            pieces.append(centered * layout["steps"][b] + offset)
        if restore == "stitch":
            values = tf.dynamic_stitch(positions, pieces)
        else:
            where = tf.cast(tf.concat(positions, axis=0), tf.int64)
            size = tf.size(where, tf.int64)
            order = tf.scatter_nd(where[:, None], tf.range(size), size[None])
            if restore == "unique":
                order = tf.gather(order, index)
            values = tf.gather(tf.concat(pieces, axis=0), order)
        return tf.reshape(values, tf.concat([tf.shape(ids), [dim]], axis=0))

    return lookup


def make_dedupe_lookup(dim: int):
    """`dedupe`: each distinct id once and the put-back gather, nothing else."""

    def lookup(ids: tf.Tensor) -> tf.Tensor:
        distinct, index = tf.unique(tf.reshape(ids, [-1]), out_idx=tf.int64)
        values = tf.broadcast_to(
            tf.cast(distinct, tf.float32)[:, None], tf.stack([tf.size(distinct), dim])
        )
        return tf.reshape(tf.gather(values, index), tf.concat([tf.shape(ids), [dim]], axis=0))

    return lookup


def make_select_lookup(layout: dict, dim: int, variables: dict, codebook: bool = False):
    """The form for XLA (no dynamic shapes): every bit-width's table is gathered for
    every id (index 0 for ids of other widths), decoded as `decode_fields` does (or
    `decode_codebook`, `codebook=True`), and the id's own width selected; XLA fuses
    the decode and the selects. Groups are found
    by the package lookup's binary search (XLA lowers `searchsorted` to all-pairs
    comparisons)."""
    from keras_mpe import lookup as lookup_module

    first_ids = tf.constant(layout["first_ids"])
    partition_table = tf.constant(layout["partition"])
    delta_table = tf.constant(layout["delta"])
    offset = tf.constant(layout["offset"])
    input_dim = layout["input_dim"]

    def lookup(ids: tf.Tensor) -> tf.Tensor:
        flat = tf.cast(tf.reshape(ids, [-1]), tf.uint32)
        valid = flat < input_dim
        flat = tf.where(valid, flat, tf.zeros_like(flat))
        slot = lookup_module.find_groups(first_ids, flat, binary=True)  # not searchsorted
        partition = tf.where(valid, tf.gather(partition_table, slot), 0)
        local = tf.cast(flat, tf.int32) + tf.gather(delta_table, slot)
        values = tf.zeros([tf.size(flat), dim])
        for k, b in enumerate(layout["widths"], start=1):
            mine = tf.equal(partition, k)
            rows = tf.gather(variables[b], tf.where(mine, local, 0))
            if codebook:
                decoded = decode_codebook(rows, b, dim, layout["steps"][b]) + offset
            else:
                codes = tf.cast(decode_row(rows, b, dim, decode_fields), tf.float32)
                decoded = (codes - 2.0 ** (b - 1)) * layout["steps"][b] + offset
            values = tf.where(mine[:, None], decoded, values)
        return tf.reshape(values, tf.concat([tf.shape(ids), [dim]], axis=0))

    return lookup


def numpy_lookup(layout: dict, ids: np.ndarray, dim: int, order: str) -> np.ndarray:
    """The values decoded in numpy (reference), fields in the order of `decode_fields`
    (`order="fields"`), in natural order (`"natural"`, `decode_matmul`) or in blocks
    (`"blocks"`, `decode_blocks`)."""
    out = np.zeros((ids.size, dim), np.float32)
    for i, id_ in enumerate(ids.reshape(-1)):
        if not 0 <= id_ < layout["input_dim"]:
            continue
        slot = np.searchsorted(layout["first_ids"], id_, side="right") - 1
        b = int(layout["bits"][slot])
        if not b:
            continue
        row = layout["tables"][b][id_ + layout["delta"][slot]]
        codes, start, low_bits = np.zeros(dim, np.int64), 0, b
        for p in PLANES[b]:
            width = dim * p // 8
            low_bits -= p
            for d in range(dim):
                if order == "blocks":
                    block, e = divmod(d, 8)
                    j, s = divmod(e * p, 8)
                    j += block * b + (start // (dim // 8)) - start
                elif order == "natural":
                    j, s = divmod(d * p, 8)
                else:
                    s, j = divmod(d, width)
                    s *= p
                codes[d] |= ((int(row[start + j]) >> s) & (2**p - 1)) << low_bits
            start += width
        centered = codes.astype(np.float32) - np.float32(2 ** (b - 1))
        out[i] = centered * layout["steps"][b] + layout["offset"]
    return out.reshape(ids.shape + (dim,))


def draw_ids(rng: np.random.Generator, input_dim: int, shape: tuple, uniform: bool) -> np.ndarray:
    """int32 ids, Zipf(1.2) ranked by frequency (id 0 the most frequent), or uniform
    (`uniform=True`: almost no id repeats within a batch at these V)."""
    if uniform:
        return rng.integers(0, input_dim, shape).astype(np.int32)
    return ((rng.zipf(1.2, shape) - 1) % input_dim).astype(np.int32)


def with_mlp(lookup, rng: np.random.Generator, dim: int):
    weights = [
        tf.constant(rng.normal(scale=0.05, size=shape).astype(np.float32))
        for shape in ((FIELDS * dim, 256), (256, 128), (128, 1))
    ]

    def model(ids: tf.Tensor) -> tf.Tensor:
        hidden = tf.reshape(lookup(ids), [-1, FIELDS * dim])
        for weight in weights[:-1]:
            hidden = tf.nn.relu(tf.matmul(hidden, weight))
        return tf.matmul(hidden, weights[-1])

    return model


def package_lookup(layout: dict, dim: int, rng: np.random.Generator):
    """The package's lookup (`keras_mpe.lookup.lookup_packed`, the layout `stitch`
    prototyped, put back as `scatter` does) at the same group bits, from variables."""
    from keras_mpe import codec, lookup

    input_dim = layout["input_dim"]
    sizes = np.diff(np.append(layout["first_ids"].astype(np.int64), input_dim))
    id_to_group = np.repeat(np.arange(sizes.size), sizes)
    table = (rng.normal(size=(input_dim, dim)) * 0.05).astype(np.float32)
    steps = [2.0**-b for b in range(1, 7)]
    packed = codec.pack_table(
        table, steps, layout["offset"], tuple(range(7)), id_to_group, layout["bits"]
    )
    arrays = {name: tf.Variable(value) for name, value in packed.arrays().items()}

    def run(ids: tf.Tensor) -> tf.Tensor:
        return lookup.lookup_packed(
            ids, arrays, input_dim=input_dim, nonzero_bit_widths=packed.nonzero_bit_widths
        )

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input_dims", default="1e5,1e6")
    parser.add_argument("--dims", default="16,32,64")
    parser.add_argument("--batches", default="64,512,4096")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--package", action="store_true", help="time keras_mpe's lookup (format 2) too"
    )
    parser.add_argument(
        "--variants",
        default="stitch,scatter,tile,matmul,blocks",
        help="comma-separated variants to time (graph mode)",
    )
    parser.add_argument("--uniform", action="store_true", help="uniform ids, not Zipf")
    parser.add_argument("--mlp", action="store_true", help="append the MLP 256-128-1")
    parser.add_argument(
        "--xla", action="store_true", help="compile with XLA (float, package, select only)"
    )
    args = parser.parse_args()
    print(
        f"TF {tf.__version__}, {'XLA' if args.xla else 'graph mode'}, {FIELDS} ids per example, "
        "median ms of "
        f"{args.repeats} interleaved calls; ratio = float throughput over the variant's"
        + (", with the MLP 256-128-1" if args.mlp else ", lookups alone")
    )
    rng = np.random.default_rng(0)
    for input_dim in (int(float(v)) for v in args.input_dims.split(",")):
        for dim in (int(d) for d in args.dims.split(",")):
            layout = make_layout(rng, input_dim, dim)
            variables = {b: tf.Variable(table) for b, table in layout["tables"].items()}
            float_table = tf.Variable(rng.normal(size=(input_dim, dim)).astype(np.float32))
            lookups = {"float": lambda ids, table=float_table: tf.gather(table, ids)}
            if args.package:
                lookups["package"] = package_lookup(layout, dim, rng)
            lookups["stitch"] = make_lookup(layout, dim, variables, decode_fields, "stitch")
            lookups["scatter"] = make_lookup(layout, dim, variables, decode_fields, "scatter")
            lookups["tile"] = make_lookup(layout, dim, variables, decode_tile, "stitch")
            lookups["matmul"] = make_lookup(layout, dim, variables, decode_matmul, "stitch")
            lookups["blocks"] = make_lookup(layout, dim, variables, decode_blocks, "stitch")
            lookups["codebook"] = make_lookup(layout, dim, variables, decode_codebook, "scatter")
            lookups["codebook_natural"] = make_lookup(
                layout, dim, variables, decode_codebook_natural, "scatter"
            )
            if dim % 16 == 0:  # whole pairs of bytes in every plane
                lookups["codebook16"] = make_lookup(
                    layout, dim, variables, decode_codebook16, "scatter"
                )
            lookups["unique"] = make_lookup(layout, dim, variables, decode_fields, "unique")
            lookups["floor"] = make_lookup(layout, dim, variables, decode_nothing, "scatter")
            lookups["unique_floor"] = make_lookup(layout, dim, variables, decode_nothing, "unique")
            lookups["dedupe"] = make_dedupe_lookup(dim)
            keep = {"float", "package", *([] if args.xla else args.variants.split(","))}
            lookups = {name: lookup for name, lookup in lookups.items() if name in keep}
            if args.xla:  # only the forms XLA compiles (no dynamic shapes)
                lookups["select"] = make_select_lookup(layout, dim, variables)
                lookups["select_codebook"] = make_select_lookup(layout, dim, variables, True)
            check = np.array([[0, 1, input_dim - 1, -1, input_dim, 5, 77]], np.int32)
            orders = dict.fromkeys(("stitch", "scatter", "unique", "codebook", "select"), "fields")
            orders.update(select_codebook="fields", blocks="blocks")
            orders.update(dict.fromkeys(("matmul", "codebook_natural", "codebook16"), "natural"))
            for name, order in orders.items():
                if name not in lookups:
                    continue
                expected = numpy_lookup(layout, check, dim, order)
                compiled = tf.function(lookups[name], jit_compile=args.xla)
                got = compiled(tf.constant(check)).numpy()
                np.testing.assert_array_equal(got, expected, err_msg=name)
            functions = {
                name: tf.function(
                    with_mlp(lookup, rng, dim) if args.mlp else lookup, jit_compile=args.xla
                )
                for name, lookup in lookups.items()
            }
            for batch in (int(b) for b in args.batches.split(",")):
                shape = (batch, FIELDS)
                inputs = [
                    tf.constant(draw_ids(rng, input_dim, shape, args.uniform)) for _ in range(4)
                ]
                times = {name: [] for name in functions}
                for function in functions.values():
                    function(inputs[0]).numpy()
                for step in range(args.repeats):
                    for name, function in functions.items():
                        start = time.perf_counter()
                        function(inputs[step % 4]).numpy()
                        times[name].append(time.perf_counter() - start)
                ms = {name: 1e3 * float(np.median(values)) for name, values in times.items()}
                print(
                    f"V={input_dim:.0e} D={dim} batch={batch}: "
                    + "  ".join(
                        f"{name} {ms[name]:.2f} ms ({ms['float'] / ms[name]:.2f}x)"
                        for name in functions
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
