"""Packed size of a table numbered the way Keras' vocabulary layers number ids.

`keras.layers.StringLookup` and `IntegerLookup`, adapted on the training data, rank the
vocabulary by descending frequency after their OOV id (index 0, or 1 after a mask
token). Counted on that same data, the OOV and mask ids have count 0, every other id
is in frequency order. This script builds a `MixedPrecisionEmbedding` from such counts
(Zipf(1.0) over `--input_dim` ids) and from perfectly ranked counts, and prints per
layout: whether the packed table needs an id-to-row permutation, its total bytes with
every group at 2 bits and with every group at 0 bits (the overhead alone), the
compression ratios, and whether `PrecisionSearch(target_compression=--target)` is in
reach.

    python benchmarks/vocabulary_layout.py --input_dim 290823 --output_dim 16 --target 64
"""

import argparse

import numpy as np

from keras_mpe import MixedPrecisionEmbedding, codec, precision


def zipf_counts(input_dim: int) -> np.ndarray:
    """Descending counts `round(1e6 / rank)`, at least 1: every id is seen."""
    return np.maximum(1, np.round(1e6 / np.arange(1, input_dim + 1))).astype(np.int64)


def layouts(input_dim: int) -> dict[str, np.ndarray]:
    ranked = zipf_counts(input_dim)
    return {
        "ranked": ranked,
        "StringLookup (OOV id 0)": np.concatenate([[0], ranked[:-1]]),
        "StringLookup with mask (ids 0, 1)": np.concatenate([[0, 0], ranked[:-2]]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_dim", type=int, default=290_823)
    parser.add_argument("--output_dim", type=int, default=16)
    parser.add_argument("--target", type=float, default=64.0)
    args = parser.parse_args()
    print("| layout | permutation | bytes at 2 bits | ratio | bytes at 0 bits | ratio | target |")
    print("|---|---|---|---|---|---|---|")
    for name, counts in layouts(args.input_dim).items():
        layer = MixedPrecisionEmbedding(args.input_dim, args.output_dim, frequencies=counts)
        layer.build()
        two, zero = (layer.memory_report(np.full(layer.groups, bits)) for bits in (2, 0))
        needs = two["overhead_bytes"] >= 4 * codec.permutation_words(args.input_dim)
        try:
            precision.check_reachable(layer, args.target)
            reach = f"{args.target:g}x in reach"
        except ValueError:
            reach = f"{args.target:g}x out of reach"
        print(
            f"| {name} | {'yes' if needs else 'no'} | {two['total_bytes']:,} | "
            f"{two['compression_ratio']:.2f}x | {zero['total_bytes']:,} | "
            f"{zero['compression_ratio']:.1f}x | {reach} |"
        )


if __name__ == "__main__":
    main()
