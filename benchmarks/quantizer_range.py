"""Quantizer-range candidates against the fair float32, per seed.

For each seed, runs each candidate with `benchmarks/compression.py`'s `run_method`
(same model, 12 epochs: 6 of search and 6 of retrain, read at the best validation-AUC
epoch) and prints one `RESULT` line per run: test AUC, logloss, compression and the
clipped share (`MixedPrecisionEmbedding.clipped_share()`) at the best epoch. A
candidate is a method (the search floors the step sizes by default, see
`PrecisionSearch`'s `quantizer_range`), optionally with `@none` (no rule in the
search), `@floor` or `@reset` (that rule in the search, and `keras_mpe.QuantizerRange`
with it in the retrain) or `@scale<S>` (`quantizer_learning_rate_scale=S`). With
`MPE_BENCH_VERBOSE=1` each epoch's validation AUC and clipped share are printed too.

    MPE_BENCH_VERBOSE=1 python benchmarks/quantizer_range.py interactions 2048 0,1,2 \\
        fp32-fair,mpe-target-16,mpe-target-16@none,mpe-target-16@floor
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compression  # noqa: E402

BITS = (0, 1, 2, 3, 4, 5, 6)
EPOCHS = 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", choices=compression.DATA)
    parser.add_argument("batch", type=int)
    parser.add_argument("seeds", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("candidates", help="comma-separated, e.g. mpe-target-16@floor")
    args = parser.parse_args()
    data = compression.load(args.data)
    print(data[4], flush=True)
    for seed in map(int, args.seeds.split(",")):
        for candidate in args.candidates.split(","):
            method, _, option = candidate.partition("@")
            search_rule = None if option == "none" else option or "floor"
            retrain_rule = option if option in ("floor", "reset") else None
            scale = None
            if option.startswith("scale"):
                search_rule, scale = "floor", float(option.removeprefix("scale"))
            start = time.time()
            print(f"== {args.data} {candidate} seed {seed}", flush=True)
            r = compression.run_method(
                method,
                seed,
                data,
                EPOCHS,
                args.batch,
                BITS,
                None,
                scale,
                search_rule,
                retrain_rule,
            )
            print(
                f"RESULT {args.data} {candidate} seed {seed} auc {r['auc']:.4f} "
                f"loss {r['loss']:.4f} ratio {r['ratio']:.1f} clipped {r['clipped']:.3f} "
                f"[{time.time() - start:.0f}s]",
                flush=True,
            )


if __name__ == "__main__":
    main()
