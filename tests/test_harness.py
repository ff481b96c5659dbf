"""Keras' own layer-test harnesses, in the search and the retrain state."""

import numpy as np
import pytest

from keras_mpe import MixedPrecisionEmbedding
from keras_mpe.backend import IS_KERAS_3, keras


@keras.utils.register_keras_serializable(package="keras_mpe_tests")
class FrozenEmbedding(MixedPrecisionEmbedding):
    """The layer as it is after `freeze_precision()`, for harnesses that build
    layers from constructor arguments."""

    def build(self, input_shape=None):
        super().build(input_shape)
        self.freeze_precision(np.resize(np.array(self.bit_widths), self.groups))


LAYERS = {"search": MixedPrecisionEmbedding, "retrain": FrozenEmbedding}
KWARGS = {"input_dim": 16, "output_dim": 4, "num_groups": 4, "bit_penalty": 1e-3}


@pytest.mark.skipif(not IS_KERAS_3, reason="Keras 3's harness; tf-keras runs its own")
@pytest.mark.parametrize("state", ["search", "retrain"])
def test_keras3_run_layer_test(state):
    from keras.src.testing import TestCase

    case = TestCase()
    case.run_layer_test(
        LAYERS[state],
        init_kwargs=KWARGS,
        input_shape=(2, 3),
        input_dtype="int32",
        expected_output_shape=(2, 3, 4),
        expected_num_trainable_weights=4 if state == "search" else 3,
        expected_num_non_trainable_weights=9 if state == "search" else 10,
        expected_num_losses=1,
        supports_masking=False,
        custom_objects={"FrozenEmbedding": FrozenEmbedding},
    )
    case.run_layer_test(
        LAYERS[state],
        init_kwargs={**KWARGS, "mask_zero": True},
        input_data=np.array([[0, 3, 5], [7, 0, 15]], np.int32),
        expected_output_shape=(2, 3, 4),
        supports_masking=True,
        expected_mask_shape=(2, 3),
        custom_objects={"FrozenEmbedding": FrozenEmbedding},
    )


@pytest.mark.skipif(IS_KERAS_3, reason="tf-keras' harness; Keras 3 runs its own")
@pytest.mark.parametrize("state", ["search", "retrain"])
def test_tf_keras_layer_test(state):
    from tf_keras.src.testing_infra import test_utils

    output = test_utils.layer_test(
        LAYERS[state],
        kwargs=KWARGS,
        input_shape=(2, 3),
        input_dtype="int32",
        expected_output_dtype="float32",
        expected_output_shape=(None, 3, 4),
        custom_objects={"FrozenEmbedding": FrozenEmbedding},
    )
    assert output.shape == (2, 3, 4)
