"""`keras_mpe.plot_precision`: the picture of a searched model, and a clear error without
matplotlib."""

import sys

import pytest
from test_callbacks import _model

import keras_mpe
from keras_mpe import MixedPrecisionEmbedding, PrecisionSearch
from keras_mpe.datasets import synthetic_ctr


def test_plot_precision_writes_a_png_of_a_searched_model(tmp_path):
    pytest.importorskip("matplotlib")
    data = synthetic_ctr(rows=6000, fields=4, ids_per_field=150, seed=3)
    model, layer = _model(data.vocabulary_size)
    model.fit(
        *data.train, epochs=2, batch_size=1000, verbose=0, callbacks=[PrecisionSearch("loss")]
    )
    path = str(tmp_path / "precision.png")
    keras_mpe.plot_precision(model, path)
    with open(path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_precision_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    layer = MixedPrecisionEmbedding(10, 2, num_groups=2)
    layer.build()
    with pytest.raises(ImportError, match="pip install matplotlib"):
        keras_mpe.plot_precision(layer, str(tmp_path / "p.png"))
