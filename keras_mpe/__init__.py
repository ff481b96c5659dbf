"""keras_mpe: Mixed-Precision Embeddings for Keras and TensorFlow Recommenders."""

from keras_mpe import datasets, optimizers
from keras_mpe.callbacks import PrecisionSearch
from keras_mpe.convert import ConversionError, convert
from keras_mpe.embedding import MixedPrecisionEmbedding
from keras_mpe.export import export_saved_model
from keras_mpe.inspection import inspect
from keras_mpe.packed_embedding import PackedEmbedding
from keras_mpe.plotting import plot_precision
from keras_mpe.quantizer_range import QuantizerRange

__version__ = "0.1.0"

__all__ = [
    "ConversionError",
    "MixedPrecisionEmbedding",
    "PackedEmbedding",
    "PrecisionSearch",
    "QuantizerRange",
    "__version__",
    "convert",
    "datasets",
    "export_saved_model",
    "inspect",
    "optimizers",
    "plot_precision",
]
