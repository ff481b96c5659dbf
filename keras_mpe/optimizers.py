"""Row-sparse adaptive optimizers: a step costs the looked-up rows, not the table.

An embedding table's gradient is a `tf.IndexedSlices` over the rows a batch looked
up. Keras 3's `Adam` and `Adagrad` turn it into work over the whole table at every
step (Adam densifies it; Adagrad computes its denominator over the whole
accumulator), and tf-keras's `Adam` decays both moments of every row. The two
optimizers here update, for an `IndexedSlices` gradient, only the named rows of the
variable and of its slots, with scatter updates; for a dense gradient they are the
flavour's own `Adam` and `Adagrad`. They apply to any variable, so a plain
`keras.layers.Embedding` benefits as much as a `MixedPrecisionEmbedding`.

Both flavours: each class subclasses the flavour's optimizer (`tf.keras.optimizers`,
Keras 3 by default, tf-keras with `TF_USE_LEGACY_KERAS=1`), with the TensorFlow
backend, and is registered for serialization under the package name "keras_mpe".
tf-keras's own `Adagrad` (and the legacy `Adagrad` and `Ftrl`) is already
row-sparse; tf-keras has no lazy Adam (TensorFlow Addons' `LazyAdam` was for it and
is no longer maintained).
"""

from typing import Any

import tensorflow as tf

from keras_mpe import checks
from keras_mpe.backend import IS_KERAS_3, keras


def _tf_variable(variable: Any) -> tf.Variable:
    """The `tf.Variable` behind an optimizer slot or a model variable."""
    return variable.value if IS_KERAS_3 and isinstance(variable, keras.Variable) else variable


def _summed_rows(gradient: tf.IndexedSlices) -> tuple[tf.Tensor, tf.Tensor]:
    """`(rows, values)` of an `IndexedSlices` gradient with each row once: the
    values of a row the batch looked up several times are summed."""
    rows, position = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
    return rows, values


class _RowSparse:
    """What both optimizers share: the slot of a variable, in either flavour."""

    def _slot(self, slots: list, variable: Any) -> tf.Variable:
        if IS_KERAS_3:
            return _tf_variable(slots[self._get_variable_index(variable)])
        return slots[self._index_dict[self._var_key(variable)]]


@keras.utils.register_keras_serializable(package="keras_mpe")
class LazyAdam(_RowSparse, keras.optimizers.Adam):
    """Adam that updates the moments of the looked-up rows only ("lazy Adam").

    For a dense gradient this is the flavour's `Adam`. For a `tf.IndexedSlices`
    gradient (an embedding table's) the first and second moments are updated for
    the rows the gradient names, and only those rows of the variable move; the
    other rows keep their moments, untouched, instead of decaying them. These are
    the documented semantics of TensorFlow 1's `tf.contrib.opt.LazyAdamOptimizer`
    and TensorFlow Addons' `LazyAdam`: the bias correction uses the optimizer's
    step count, and a row's moments are those of the steps that looked it up. A
    row looked up several times in one batch gets the sum of its gradients, once.

    With `catch_up=True` a row looked up again after `k` skipped steps first
    decays its moments by `beta_1**k` and `beta_2**k` and moves by the `k` steps
    that `Adam` would have made from them, in closed form:
    `alpha * m / (sqrt(v) + epsilon) * sum_{j=1..k} (beta_1 / sqrt(beta_2))**j`
    (with the current step's `alpha`), then takes its step as above. That is
    Adam's own trajectory when the learning rate and the bias correction are
    constant and `epsilon` is small against `sqrt(v)`. It keeps one int32 per row
    more: the step that last updated the row.

    `amsgrad` is not supported. Weight decay, if set, applies to whole variables
    at every step (the base optimizer's rule): exclude the tables with
    `exclude_from_weight_decay` to keep their steps row-sparse.

    Example:

    >>> table = tf.Variable(tf.ones([4, 2]))
    >>> optimizer = LazyAdam(learning_rate=0.1)
    >>> gradient = tf.IndexedSlices(tf.ones([1, 2]), tf.constant([2]), tf.constant([4, 2]))
    >>> _ = optimizer.apply_gradients([(gradient, table)])
    >>> [round(float(x), 3) for x in table.numpy()[:, 0]]
    [1.0, 1.0, 0.9, 1.0]

    Args:
        learning_rate: as for `Adam`. Defaults to 0.001.
        beta_1: the decay rate of the first moment. Defaults to 0.9.
        beta_2: the decay rate of the second moment. Defaults to 0.999.
        epsilon: added to `sqrt(v)`. Defaults to 1e-7.
        catch_up: bool, whether a row makes up, when it is looked up again, the
            steps Adam would have moved it while it was not (see above).
            Defaults to False.
        **kwargs: the base optimizer's arguments (`name`, `clipnorm`, ...).
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        catch_up: bool = False,
        name: str = "lazy_adam",
        **kwargs: Any,
    ) -> None:
        if kwargs.get("amsgrad"):
            raise ValueError(
                "LazyAdam does not support `amsgrad`: it would need the maximum of every "
                "row's second moment at every step. Received: amsgrad=True"
            )
        kwargs.pop("amsgrad", None)
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            name=name,
            **kwargs,
        )
        self.catch_up = checks.boolean("catch_up", catch_up)

    def build(self, var_list: list) -> None:
        if getattr(self, "_last_steps", None) is not None:
            return
        super().build(var_list)
        # with catch_up, the step (1-based) that last updated each row (0: never)
        self._last_steps = (
            [
                self.add_variable(
                    shape=(variable.shape[0] if variable.shape.rank else 0,),
                    dtype="int32",
                    name=f"last_step_{i}",
                )
                for i, variable in enumerate(var_list)
            ]
            if self.catch_up
            else []
        )

    def update_step(self, gradient: Any, variable: Any, *learning_rate: Any) -> None:
        step_number = tf.cast(self.iterations + 1, tf.int32)
        if not isinstance(gradient, tf.IndexedSlices):
            if self.catch_up and variable.shape.rank:  # every row is up to date
                self._slot(self._last_steps, variable).assign(
                    tf.fill([variable.shape[0]], step_number)
                )
            return super().update_step(gradient, variable, *learning_rate)
        variable = _tf_variable(variable)
        dtype = variable.dtype
        lr = tf.cast(learning_rate[0] if learning_rate else self.learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        alpha = lr * tf.sqrt(1 - beta_2**step) / (1 - beta_1**step)
        epsilon = tf.cast(self.epsilon, dtype)
        if getattr(self, "adaptive_epsilon", False):  # a tf-keras Adam option
            epsilon *= tf.sqrt(1 - beta_2**step)
        rows, values = _summed_rows(gradient)
        values = tf.cast(values, dtype)
        m_slot, v_slot = (
            self._slot(self._momentums, variable),
            self._slot(self._velocities, variable),
        )
        m, v = tf.gather(m_slot, rows), tf.gather(v_slot, rows)
        if self.catch_up:
            last_steps = self._slot(self._last_steps, variable)
            last = tf.gather(last_steps, rows)
            skipped = tf.cast(step_number - 1 - last, dtype)[:, None]
            ratio = beta_1 / tf.sqrt(beta_2)
            missed = ratio * (1 - ratio**skipped) / (1 - ratio)  # sum_{j=1..k} ratio**j
            variable.scatter_sub(
                tf.IndexedSlices(alpha * missed * m / (tf.sqrt(v) + epsilon), rows)
            )
            m, v = m * beta_1**skipped, v * beta_2**skipped
            last_steps.scatter_update(tf.IndexedSlices(tf.fill(tf.shape(rows), step_number), rows))
        m += (values - m) * (1 - beta_1)
        v += (tf.square(values) - v) * (1 - beta_2)
        m_slot.scatter_update(tf.IndexedSlices(m, rows))
        v_slot.scatter_update(tf.IndexedSlices(v, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m / (tf.sqrt(v) + epsilon), rows))

    def get_config(self) -> dict:
        config = super().get_config()
        config["catch_up"] = self.catch_up
        return config


@keras.utils.register_keras_serializable(package="keras_mpe")
class Adagrad(_RowSparse, keras.optimizers.Adagrad):
    """Adagrad whose step for a row-sparse gradient touches the looked-up rows only.

    Adagrad is exactly row-sparse: a row with no gradient keeps its accumulator
    and its value. For a dense gradient this is the flavour's `Adagrad`; for a
    `tf.IndexedSlices` gradient it computes the same update, `accumulator +=
    g**2; variable -= learning_rate * g / sqrt(accumulator + epsilon)`, on the
    named rows only (Keras 3's `Adagrad` computes the denominator over the whole
    table). A row looked up several times in one batch gets the sum of its
    gradients, once, so `g**2` is the square of the sum, as for a dense gradient.

    Example:

    >>> table = tf.Variable(tf.ones([4, 2]))
    >>> optimizer = Adagrad(learning_rate=0.1, initial_accumulator_value=0.0, epsilon=0.0)
    >>> gradient = tf.IndexedSlices(tf.ones([2, 2]), tf.constant([1, 1]), tf.constant([4, 2]))
    >>> _ = optimizer.apply_gradients([(gradient, table)])
    >>> [round(float(x), 3) for x in table.numpy()[:, 0]]
    [1.0, 0.9, 1.0, 1.0]

    Args:
        learning_rate: as for `Adagrad`. Defaults to 0.001.
        initial_accumulator_value: the accumulators' starting value, >= 0.
            Defaults to 0.1.
        epsilon: added to the accumulator under the square root. Defaults to 1e-7.
        **kwargs: the base optimizer's arguments (`name`, `clipnorm`, ...).
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-7,
        name: str = "adagrad",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            initial_accumulator_value=initial_accumulator_value,
            epsilon=epsilon,
            name=name,
            **kwargs,
        )

    def build(self, var_list: list) -> None:
        if not IS_KERAS_3:
            return super().build(var_list)
        if self.built:
            return None
        # Keras 3's Adagrad fills its accumulators through `Constant`, which
        # multiplies a tensor of ones by the value: a second whole table at once.
        # `tf.fill` makes the one the variable keeps.
        keras.optimizers.Optimizer.build(self, var_list)
        value = self.initial_accumulator_value
        self._accumulators = self.add_optimizer_variables(
            var_list,
            "accumulator",
            initializer=lambda shape, dtype=None: tf.fill(shape, tf.constant(value, dtype)),
        )
        return None

    def update_step(self, gradient: Any, variable: Any, *learning_rate: Any) -> None:
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, *learning_rate)
        variable = _tf_variable(variable)
        dtype = variable.dtype
        lr = tf.cast(learning_rate[0] if learning_rate else self.learning_rate, dtype)
        rows, values = _summed_rows(gradient)
        values = tf.cast(values, dtype)
        accumulator_slot = self._slot(self._accumulators, variable)
        accumulator = tf.gather(accumulator_slot, rows) + tf.square(values)
        accumulator_slot.scatter_update(tf.IndexedSlices(accumulator, rows))
        step = lr * values / tf.sqrt(accumulator + tf.cast(self.epsilon, dtype))
        variable.scatter_sub(tf.IndexedSlices(step, rows))
