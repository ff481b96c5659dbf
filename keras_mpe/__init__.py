"""keras_mpe: Mixed-Precision Embeddings for Keras and TensorFlow Recommenders."""

from keras_mpe.embedding import MixedPrecisionEmbedding

__version__ = "0.1.0"

__all__ = ["MixedPrecisionEmbedding", "__version__"]
