"""The examples and the demo, run with `--smoke` in a fresh process, and the train-step,
serving and scale benchmarks, run at a toy size.

Each script runs in the Keras flavour it is written for, in the CI pass of that flavour:
the TFRS examples (which force tf-keras themselves) in the `TF_USE_LEGACY_KERAS=1`
pass, the Keras 3 CTR example in the default pass, and the demo in both. The MovieLens
examples are skipped when MovieLens cannot be loaded (no cache and no network).
"""

import functools
import os
import re

import pytest
import tensorflow as tf
from scripts import ROOT, run_script

from keras_mpe.backend import IS_KERAS_3
from keras_mpe.datasets import DatasetUnavailableError, load_movielens

EXAMPLES = ROOT / "examples"
BENCHMARKS = ROOT / "benchmarks"
TIMEOUT = 300  # seconds; a smoke run takes well under one minute on 2 cores

tf_keras_only = pytest.mark.skipif(
    IS_KERAS_3,
    reason="a TFRS example (tf-keras); it runs in the TF_USE_LEGACY_KERAS=1 test pass",
)
keras_3_only = pytest.mark.skipif(
    not IS_KERAS_3, reason="a Keras 3 example; it runs in the default (Keras 3) test pass"
)


@functools.cache
def _movielens_error(variant: str) -> str | None:
    """Why MovieLens-`variant` cannot be loaded (fetching it if need be), or None."""
    try:
        load_movielens(variant)
    except DatasetUnavailableError as error:
        return str(error)
    return None


def _require_movielens(variant: str) -> None:
    error = _movielens_error(variant)
    if error is not None:
        pytest.skip(f"MovieLens-{variant} is unavailable: {error}")


def _run(arguments: list[str], legacy_keras: bool, env: dict | None = None) -> str:
    return run_script(arguments, legacy_keras, TIMEOUT, env)


def _assert_lines(output: str, patterns: list[str]) -> None:
    for pattern in patterns:
        assert re.search(pattern, output, re.MULTILINE), f"no line matches {pattern!r}:\n{output}"


NUMBER = r"\d+\.\d+"


@tf_keras_only
def test_tfrs_basic_ranking_smoke():
    _require_movielens("100k")
    output = _run([str(EXAMPLES / "tfrs_basic_ranking.py"), "--smoke"], legacy_keras=True)
    _assert_lines(
        output,
        [
            r"^data: MovieLens-100k",
            rf"^  test RMSE float32 towers: +{NUMBER}$",
            rf"^  test RMSE MPE towers: +{NUMBER}$",
            rf"^  test RMSE served from the SavedModel: +{NUMBER}$",
            r"^  max \|SavedModel - Keras\| over the test set: 0\.00e\+00$",
            rf"^  user_embedding: {NUMBER}x with overhead",
            rf"^  movie_embedding: {NUMBER}x with overhead",
            r"^  SavedModel: .* \([\d,]+ bytes on disk",
        ],
    )


@tf_keras_only
def test_tfrs_retrieval_smoke():
    _require_movielens("100k")
    output = _run([str(EXAMPLES / "tfrs_retrieval.py"), "--smoke"], legacy_keras=True)
    _assert_lines(
        output,
        [
            r"^data: MovieLens-100k",
            rf"^ +100 +{NUMBER} +{NUMBER}$",
            rf"^  top-100 accuracy: float32 {NUMBER}, MPE {NUMBER}",
            r"^  test queries whose user embedding is pruned .*: \d+\.\d%$",
            rf"^  user_embedding: {NUMBER}x with overhead",
            rf"^  movie_embedding: {NUMBER}x with overhead",
        ],
    )


@keras_3_only
def test_ctr_movielens_smoke():
    _require_movielens("1m")
    output = _run([str(EXAMPLES / "ctr_movielens.py"), "--smoke"], legacy_keras=False)
    _assert_lines(
        output,
        [
            r"^data: MovieLens-1m",
            rf"^  float32 Embedding +{NUMBER} +{NUMBER} +[\d,]+$",
            rf"^  MixedPrecisionEmbedding \(packed\) +{NUMBER} +{NUMBER} +[\d,]+$",
            rf"^  compression: {NUMBER}x with overhead",
        ],
    )


def test_convert_trained_model_smoke():
    # MovieLens-100K when it can be loaded, else the example's synthetic fallback
    output = _run(
        [str(EXAMPLES / "convert_trained_model.py"), "--smoke"], legacy_keras=not IS_KERAS_3
    )
    _assert_lines(
        output,
        [
            r"^data: ",
            rf"^  test AUC float32 model: +{NUMBER}$",
            rf"^  test AUC convert epochs=0: {NUMBER} \([+-]{NUMBER}\), 1[6-9]\.\dx with overhead",
            rf"^  test AUC convert epochs=1: {NUMBER} \([+-]{NUMBER}\), 1[6-9]\.\dx with overhead",
            # bit for bit in Keras 3, float rounding (1e-7) in tf-keras
            r"^  max \|SavedModel - Keras\| over \d+ test rows: (0\.00e\+00|\d\.\d\de-0[6-9])$",
            r"^  the original model still holds: Embedding$",
        ],
    )


DEMO_SUMMARY = [
    rf"^test AUC float32: +{NUMBER}",
    *[
        rf"^  {name}: +{NUMBER} at {NUMBER}x \([+-]{NUMBER}, post-training\)$"
        for name in ("int8", "int4", r"int4 \+ pruning 8x", r"int4 \+ pruning 16x")
    ],
    *[rf"^  MPE target +{t}x: +{NUMBER} at {NUMBER}x \([+-]{NUMBER}\)$" for t in (4, 8, 16, 32)],
    r"^(largest compression within 0.003 AUC of float32: [\d.]+x|no target kept the AUC)",
    rf"^test AUC MPE: +{NUMBER}",
    rf"^AUC difference: +[+-]{NUMBER}",
    rf"^compression ratio: +{NUMBER}x with overhead",
    r"^SavedModel size: +[\d,]+ bytes on disk",
    r"^reload check: +passed \(fresh process without keras_mpe",
]


def test_demo_smoke_on_movielens(tmp_path):
    _require_movielens("100k")
    # through the console command's entry point, as `keras-mpe demo --smoke` runs it
    output = _run(
        ["-m", "keras_mpe.cli", "demo", "--smoke", "--output-dir", str(tmp_path)],
        legacy_keras=not IS_KERAS_3,
    )
    _assert_lines(output, [r"^=== keras-mpe demo summary \(MovieLens-100K\) ===$", *DEMO_SUMMARY])
    assert (tmp_path / "precision.png").stat().st_size > 0
    assert (tmp_path / "tradeoff.png").stat().st_size > 0
    assert (tmp_path / "saved_model" / "saved_model.pb").is_file()


@keras_3_only
def test_demo_smoke_falls_back_to_synthetic_data_without_movielens(tmp_path):
    # An empty home (no MovieLens cache) and pip without an index: MovieLens is unavailable.
    env = dict(os.environ, HOME=str(tmp_path / "home"), PIP_NO_INDEX="1")
    output = _run(
        ["-m", "keras_mpe.demo", "--smoke", "--output-dir", str(tmp_path / "out")],
        legacy_keras=False,
        env=env,
    )
    _assert_lines(
        output,
        [
            r"^NOTE: MovieLens-100K is unavailable, so this demo runs on SYNTHETIC data",
            r"^=== keras-mpe demo summary \(SYNTHETIC data\) ===$",
            r"^data: +SYNTHETIC click data",
            *DEMO_SUMMARY,
        ],
    )


def test_train_step_benchmark_runs_at_a_toy_size():
    arguments = ["--input_dim", "1000", "--steps", "2", "--batch", "64", "--hidden", "8"]
    output = _run([str(BENCHMARKS / "train_step.py"), *arguments], legacy_keras=not IS_KERAS_3)
    _assert_lines(
        output,
        [rf"^  {name} +{NUMBER} ms +{NUMBER}x$" for name in ("embedding", "search", "retrain")],
    )


def test_serving_benchmark_runs_at_a_toy_size():
    arguments = ["--input_dims", "3000", "--repeats", "1", "--batch", "32", "--fields", "4"]
    output = _run([str(BENCHMARKS / "serving.py"), *arguments], legacy_keras=not IS_KERAS_3)
    rate = r"[\d.e+]+"
    int4 = rf" +{rate}" if IS_KERAS_3 else ""  # tf-keras has no int4 Embedding
    _assert_lines(
        output,
        [
            rf"^input_dim=3000: packed {NUMBER} MiB",
            rf"^  eager +{rate} +{rate}{int4} +- +packed/float {NUMBER}x",
            rf"^  graph +{rate} +{rate}{int4} +{rate} +packed/float .*exported/float {NUMBER}x$",
            rf"^  xla +{rate} +{rate}{int4} +{rate} +packed/float .*exported/float {NUMBER}x$",
        ],
    )


def test_end_to_end_serving_benchmark_runs_every_serving_table_at_a_toy_size():
    arguments = [
        "--end_to_end",
        *("--input_dims", "2000", "--dims", "8", "--batches", "8", "--fields", "4"),
        *("--repeats", "1", "--serving_tables", "packed,int8,float32"),
    ]
    output = _run([str(BENCHMARKS / "serving.py"), *arguments], legacy_keras=not IS_KERAS_3)
    _assert_lines(
        output,
        [
            rf"^V=2e\+03 D=8: packed {NUMBER} average bits, {NUMBER}x smaller than float32",
            r"^ +batch +float32 +mpe serving_default +mpe serving_xla +mpe int8 serving_default",
            rf"^ +8(?: +{NUMBER}ms){{7}} +(?:{NUMBER}x +){{5}}{NUMBER}x$",
        ],
    )


def test_serving_table_memory_benchmark_runs_at_a_toy_size():
    arguments = ["--input_dims", "2000", "--dims", "8"]
    script = str(BENCHMARKS / "serving_table_memory.py")
    output = _run([script, *arguments], legacy_keras=not IS_KERAS_3)
    _assert_lines(
        output,
        [
            rf"^ +2e\+03 +8 +{name} +{NUMBER} +-?\d+ +\d+ +\d+$"
            for name in ("float32 model", "packed", "int8", "float32")
        ],
    )


@tf_keras_only
def test_tfrs_serving_benchmark_runs_at_a_toy_size():
    _require_movielens("100k")
    arguments = ["--batches", "8,16", "--repeats", "1"]
    output = _run([str(BENCHMARKS / "serving_tfrs.py"), *arguments], legacy_keras=True)
    _assert_lines(
        output,
        [
            rf"^TFRS basic ranking, .*; tables {NUMBER}x smaller packed",
            *[
                rf"^ +{batch}(?: +{NUMBER}ms){{4}} +{NUMBER}x {NUMBER}x {NUMBER}x$"
                for batch in (8, 16)
            ],
        ],
    )


def test_packed_layout_prototype_decodes_like_numpy_at_a_toy_size():
    """The script compares each prototype's rows (out-of-range ids included) with a
    numpy decode of its layout before timing, and exits with an error if one differs."""
    script = str(BENCHMARKS / "packed_layout_prototype.py")
    arguments = ["--input_dims", "2000", "--dims", "8,24", "--batches", "8", "--repeats", "1"]
    variants = ("package", "stitch", "scatter", "tile", "matmul", "blocks")
    output = _run([script, *arguments, "--package"], legacy_keras=not IS_KERAS_3)
    ratios = "".join(rf" +{name} {NUMBER} ms \({NUMBER}x\)" for name in variants)
    for dim in (8, 24):
        _assert_lines(
            output, [rf"^V=2e\+03 D={dim} batch=8: float {NUMBER} ms \(1\.00x\){ratios}$"]
        )
    output = _run([script, *arguments, "--xla"], legacy_keras=not IS_KERAS_3)
    _assert_lines(output, [rf"^V=2e\+03 D=24 batch=8: float .* select {NUMBER} ms"])
    # the stages of the lookup, timed apart (no decode: nothing to compare)
    stages = ("unique_floor", "dedupe")
    output = _run(
        [script, *arguments, "--variants", ",".join(stages)], legacy_keras=not IS_KERAS_3
    )
    ratios = "".join(rf" +{name} {NUMBER} ms \({NUMBER}x\)" for name in stages)
    _assert_lines(output, [rf"^V=2e\+03 D=8 batch=8: float {NUMBER} ms \(1\.00x\){ratios}$"])


def test_gpu_serving_check_says_when_there_is_no_gpu():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present: the check would run for real")
    output = _run([str(BENCHMARKS / "gpu_serving.py")], legacy_keras=not IS_KERAS_3)
    _assert_lines(output, [r"^no GPU found$"])


@pytest.mark.parametrize("optimizer", ["adam", "lazy_adam"])
def test_scale_benchmark_runs_at_a_toy_size(optimizer):
    arguments = ["--input_dim", "2000", "--steps", "2", "--warmup", "1", "--batch", "32"]
    arguments += ["--fields", "4", "--hidden", "8", "--adapt_ids", "100000"]
    arguments += ["--optimizer", optimizer]
    output = _run([str(BENCHMARKS / "scale.py"), *arguments], legacy_keras=not IS_KERAS_3)
    rss = r"[\d,]+ M +[\d.]+x"
    _assert_lines(
        output,
        [
            rf"^scale, .*input_dim=2,000 D=16 .* {optimizer} lr 0\.001",
            rf"^  embedding +{NUMBER} +{NUMBER} +{NUMBER} +{rss} +{NUMBER} +1\.00x",
            rf"^  adapt .* {rss} +- +- +{NUMBER}M ids/s over 100,096 ids",
            rf"^  search .* {rss} +{NUMBER} +{NUMBER}x +peak {NUMBER}x table before",
            rf"^  retrain .* {rss} +{NUMBER} +{NUMBER}x",
            rf"^  export .* {rss} +- +- +export adds [\d,]+ MiB = {NUMBER}x table",
        ],
    )


def test_scale_benchmark_reports_a_phase_the_watchdog_kills():
    # no machine has 1,000 TiB available: the watchdog kills the phase at once
    arguments = ["--input_dim", "2000", "--phases", "retrain", "--min_available_gib", "1e6"]
    output = _run([str(BENCHMARKS / "scale.py"), *arguments], legacy_keras=not IS_KERAS_3)
    _assert_lines(
        output,
        [
            r"^scale, \?",
            r"^  retrain +[\d.]+ +killed \d+ s in, when the system's available memory fell "
            r"below 1000000\.0 GiB; its RSS had reached [\d,]+ MiB",
        ],
    )
