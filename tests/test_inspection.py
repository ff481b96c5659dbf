"""`keras_mpe.inspect` and `keras-mpe inspect`: a SavedModel's packed tables, read alone."""

import configparser
import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from export_models import two_table_model

import keras_mpe
from keras_mpe import cli, codec

BYTE_FIGURES = (
    "average_bits",
    "payload_bytes",
    "padding_bytes",
    "overhead_bytes",
    "total_bytes",
    "float32_bytes",
    "compression_ratio",
    "payload_compression_ratio",
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, user, item = two_table_model()
    before = {}
    for layer in (user, item):
        bits = layer.group_bits.numpy()
        rows = np.bincount(layer.id_to_group.numpy(), minlength=layer.groups)
        before[layer.name] = (layer.memory_report(), bits, rows, layer.bit_widths)
    export_dir = str(tmp_path_factory.mktemp("inspect") / "export")
    keras_mpe.export_saved_model(model, export_dir)
    return export_dir, before


def test_inspect_gives_the_layers_memory_report_from_the_saved_model(exported):
    export_dir, before = exported
    reports = keras_mpe.inspect(export_dir)
    assert sorted(reports) == ["item_table", "user_table"]
    for name, (memory, bits, rows, candidates) in before.items():
        report = reports[name]
        for key in BYTE_FIGURES:
            assert report[key] == pytest.approx(memory[key], rel=1e-12), key
        assert report["stored_bytes"] == memory["total_bytes"]
        assert report["bit_widths"] == list(candidates)
        assert report["groups"] == bits.size
        assert report["bits_histogram"] == {b: int((bits == b).sum()) for b in candidates}
        assert report["rows_histogram"] == {b: int(rows[bits == b].sum()) for b in candidates}

    # by hand: users 5 groups x 10 rows, D=4, bits (8, 4, 1, 0, 4), 3 step sizes;
    # bytes per row: a plane of p bits takes ceil(4 * p / 8) bytes, so 4 + 2 + 1 + 0 + 2
    user = reports["user_table"]
    assert (user["input_dim"], user["output_dim"], user["permutation"]) == (50, 4, False)
    assert user["payload_bytes"] == 10 * 9
    # the codes alone: 10 rows x 4 values x (8 + 4 + 1 + 0 + 4) bits = 85 bytes; the
    # 1-bit rows take a byte for 4 bits
    assert user["padding_bytes"] == 90 - 85
    assert user["overhead_bytes"] == 4 * (3 + 4 + 3 * 5)
    assert user["compression_ratio"] == pytest.approx(50 * 4 * 4 / (90 + 88))
    # items: 6 groups x 50 rows, D=8 (rows of D * b / 8 bytes), bits (0, 2, 3, 5, 3, 2):
    # 0 + 2 + 3 + 5 + 3 + 2 bytes per row; the ids are not frequency-ranked, so a
    # 9-bit permutation of 300 ids (85 words) is stored
    item = reports["item_table"]
    assert (item["input_dim"], item["output_dim"], item["permutation"]) == (300, 8, True)
    assert item["payload_bytes"] == 50 * 15
    assert item["padding_bytes"] == 0  # D=8: every plane fills whole bytes
    assert item["overhead_bytes"] == 4 * (3 + 8 + 3 * 6) + 4 * 85
    assert item["bits_histogram"] == {0: 1, 2: 2, 3: 2, 5: 1}
    assert item["rows_histogram"] == {0: 50, 2: 100, 3: 100, 5: 50}
    assert item["payload_compression_ratio"] == pytest.approx(300 * 8 * 4 / 750)


def test_inspect_names_what_is_missing_or_inconsistent(exported, tmp_path):
    export_dir, _ = exported
    with pytest.raises(FileNotFoundError, match="not a keras_mpe export.*keras_mpe.json"):
        keras_mpe.inspect(str(tmp_path))

    no_checkpoint = tmp_path / "no_checkpoint"
    shutil.copytree(os.path.join(export_dir, "assets.extra"), no_checkpoint / "assets.extra")
    with pytest.raises(FileNotFoundError, match="no SavedModel checkpoint"):
        keras_mpe.inspect(str(no_checkpoint))

    tampered = tmp_path / "tampered"
    shutil.copytree(export_dir, tampered)
    metadata_path = tampered / "assets.extra" / "keras_mpe.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["tables"][0]["input_dim"] += 40  # the last group would get 40 more rows
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="`rows_8` holds 10 rows; the groups at 8 bits have 50"):
        keras_mpe.inspect(str(tampered))

    metadata["tables"][0]["object_path"] = ["tables", "7"]
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="object graph has no '7' under tables; it has"):
        keras_mpe.inspect(str(tampered))

    del metadata["tables"][1]["input_dim"]
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"table 1 lacks \['input_dim'\]"):
        keras_mpe.inspect(str(tampered))


def test_keras_mpe_inspect_command_prints_the_figures(exported):
    export_dir, _ = exported
    expected = keras_mpe.inspect(export_dir)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "keras_mpe.cli", "inspect", export_dir]
    printed = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, env=env, check=True
    )
    reports = json.loads(printed.stdout)
    for name, report in expected.items():
        for key in ("bits_histogram", "rows_histogram"):
            assert reports[name].pop(key) == {str(b): n for b, n in report[key].items()}
        assert reports[name] == {k: v for k, v in report.items() if "histogram" not in k}

    printed = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    assert printed.stdout.strip() == cli.format_inspection(expected)
    assert "table 'item_table': 300 ids x 8 dims, 6 groups, candidate bits 0, 2, 3, 5" in (
        printed.stdout
    )
    assert "  payload             750 bytes\n" in printed.stdout
    assert "  payload              90 bytes (5 of them pad rows to whole bytes)" in printed.stdout


def test_an_export_of_another_format_is_named_in_one_line(exported, tmp_path, capsys):
    """An export whose metadata names another layout version (format 1, the
    bit-stream layout of earlier releases) is refused in one line naming both
    formats; the SavedModel itself still loads and serves without keras_mpe."""
    export_dir, _ = exported
    older = tmp_path / "older"
    shutil.copytree(export_dir, older)
    metadata_path = older / "assets.extra" / "keras_mpe.json"
    metadata = json.loads(metadata_path.read_text())
    assert metadata["format"] == codec.FORMAT == 2
    metadata_path.write_text(json.dumps({**metadata, "format": 1}))
    message = "describes packed tables of format 1; this keras_mpe reads format 2 only"
    with pytest.raises(ValueError, match=message):
        keras_mpe.inspect(str(older))
    assert cli.main(["inspect", str(older)]) == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    served = tf.saved_model.load(str(older)).signatures["serving_default"]
    assert served.structured_outputs


def test_keras_mpe_command_errors(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path)]) == 1
    assert "keras-mpe inspect: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:
        cli.main([])
    assert error.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_the_console_script_entry_point_is_cli_main():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(os.path.dirname(__file__), os.pardir, "setup.cfg"))
    lines = setup["options.entry_points"]["console_scripts"].strip().splitlines()
    scripts = {name.strip(): target.strip() for name, target in (x.split("=") for x in lines)}
    module, function = scripts["keras-mpe"].split(":")
    assert getattr(importlib.import_module(module), function) is cli.main
