"""benchmarks/compression.py: its method names, the paper's parameterisation and its
picture (the runs themselves are benchmarks, not tests)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import keras_mpe

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "compression.py"
_SPEC = importlib.util.spec_from_file_location("compression_benchmark", _PATH)
compression = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(compression)

BITS = (0, 2, 4)


def test_the_paper_recipe_and_each_deviation():
    layer_class, options, search = compression.mpe_recipe("paper-1e-4", BITS)
    assert layer_class is compression.DirectQuantizerEmbedding
    assert options == {"search_forward": "expectation", "bit_widths": BITS, "bit_penalty": 1e-4}
    # the paper's search: a fixed temperature, no quantizer-range floor
    paper_search = {"initial_temperature": None, "quantizer_range": None}
    assert search == paper_search
    _, options, search = compression.mpe_recipe("paper+sample-3e-5", BITS)
    assert options["search_forward"] == "sample" and search == paper_search
    _, options, search = compression.mpe_recipe("paper+anneal-1e-4", BITS)
    assert options["search_forward"] == "expectation"
    assert search == {**paper_search, "initial_temperature": 1.0}
    layer_class, _, _ = compression.mpe_recipe("paper+logsteps-1e-4", BITS)
    assert layer_class is keras_mpe.MixedPrecisionEmbedding
    _, options, search = compression.mpe_recipe("paper-target-16", BITS)
    assert "bit_penalty" not in options and search["target_compression"] == 16.0
    # the defaults: nothing set beyond the candidates and the budget
    layer_class, options, search = compression.mpe_recipe("mpe-target-32", BITS)
    assert layer_class is keras_mpe.MixedPrecisionEmbedding
    assert options == {"bit_widths": BITS} and search == {"target_compression": 32.0}


def test_direct_quantizer_learns_the_step_sizes_themselves():
    layer = compression.DirectQuantizerEmbedding(50, 4, bit_widths=BITS)
    layer.build((None,))
    mean_abs = float(layer.offset_scale.numpy())  # mean |initial table|
    expected = [2 * mean_abs / np.sqrt(2.0 ** (b - 1)) for b in (2, 4)]
    np.testing.assert_allclose(layer.log_step_sizes.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(layer.step_sizes.numpy(), expected, rtol=1e-5)
    layer.relative_offset.assign([0.1, -0.2, 0.3, 0.0])
    np.testing.assert_allclose(layer.offset.numpy(), [0.1, -0.2, 0.3, 0.0])
    # a step size that crossed zero is used by its magnitude
    layer.log_step_sizes.assign([-0.01, 0.02])
    np.testing.assert_allclose(layer.step_sizes.numpy(), [0.01, 0.02])
    with tf.GradientTape() as tape:
        out = layer(tf.constant([0, 1, 2]), training=True)
        loss = tf.reduce_sum(out)
    gradient = tape.gradient(loss, layer.log_step_sizes)
    assert gradient is not None and np.isfinite(gradient.numpy()).all()


@pytest.mark.parametrize(
    "method, line",
    [
        ("paper+sample-1e-4", "paper+sample"),
        ("paper-target-16", "paper-target"),
        ("mpe-target-16", "mpe-target"),
        ("mpe-1e-5", "mpe"),
        ("qat-4bit", "qat"),
        ("threshold-32", "threshold"),
    ],
)
def test_curve_name_drops_the_budget(method, line):
    assert compression.curve_name(method) == line


def test_results_round_trip_and_picture(tmp_path, monkeypatch):
    monkeypatch.setattr(compression, "RESULTS", str(tmp_path))
    row = {"loss": 0.5, "loss_std": 0.01, "bits": 2.0, "payload_ratio": 16.0, "bytes": 1000.0}
    rows = [
        {**row, "method": "fp32-rewind-mpe-init", "auc": 0.81, "auc_std": 0.001, "ratio": 1.0,
         "saved_bytes": 2e6, "signal_kept": np.nan},
        {**row, "method": "mpe-target-16", "auc": 0.809, "auc_std": 0.002, "ratio": 16.5,
         "saved_bytes": 5e5, "signal_kept": 0.97, "seed_aucs": [0.8071, 0.8109]},
        {**row, "method": "mpe-target-32", "auc": 0.60, "auc_std": 0.1, "ratio": 33.0,
         "saved_bytes": np.nan, "signal_kept": 0.5},
    ]  # fmt: skip
    compression.write_results(rows, "part", "toy", ["a run line"], "toy data")
    runs, read = compression.read_results(str(tmp_path / "part.md"))
    assert runs == [] and [r["method"] for r in read] == [r["method"] for r in rows]
    assert read[1]["auc"] == 0.809 and read[1]["ratio"] == 16.5 and read[1]["signal_kept"] == 0.97
    assert np.isnan(read[0]["signal_kept"]) and np.isnan(read[2]["saved_bytes"])
    assert read[1]["seed_aucs"] == [0.8071, 0.8109] and read[0]["seed_aucs"] == []
    assert (tmp_path / "part.png").stat().st_size > 0


def test_the_picture_is_against_fp32_fair_when_it_was_run(tmp_path, monkeypatch):
    monkeypatch.setattr(compression, "RESULTS", str(tmp_path))
    baselines = []
    monkeypatch.setattr(compression, "plot_curves", lambda *args: baselines.append(args[3]))
    row = {"auc": 0.8, "auc_std": 0.0, "loss": 0.5, "loss_std": 0.0, "bits": 32.0,
           "ratio": 1.0, "payload_ratio": 1.0, "bytes": 1000.0, "saved_bytes": np.nan}  # fmt: skip
    rewind = {**row, "method": "fp32-rewind-mpe-init"}
    compression.write_results([rewind], "a", "toy", [], "toy data")
    compression.write_results([rewind, {**row, "method": "fp32-fair"}], "b", "toy", [], "toy")
    assert baselines == ["fp32-rewind-mpe-init", "fp32-fair"]
