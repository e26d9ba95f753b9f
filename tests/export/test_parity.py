"""The export AP-parity table is built from export reports; bad reports are named errors."""
import json

import pytest

from quant_det.export.parity import parity_rows, replace_section


def _report(path, **over):
    report = {"command": "python tools/export_onnx.py --config-file c.yaml", "onnx_bytes": 13_600_000,
              "opset": 20, "int4": True, "float_weights_for_float_convs": False,
              "log": [{"weight": "lsq/8b DQ INT8 per-channel", "activation": "lsq/8b QDQ UINT8", "BN": "folded"},
                      {"weight": "lsq/8b DQ INT8 per-tensor", "activation": "lsq/8b QDQ INT8",
                       "BN": "kept (negated code)"},
                      {"weight": "float", "activation": "float", "BN": "none"}],
              "layer_max_abs_diff": {"a": {"layer": 1e-6, "accumulated": 0.0, "max_abs_output": 100.0},
                                     "b": {"layer": 2e-6, "accumulated": 0.0, "max_abs_output": 4.0}},
              "ap": {"pytorch": {"AP": 51.684}, "onnxruntime": {"AP": 51.746}, "delta_AP": 0.062}}
    report.update(over)
    path.write_text(json.dumps(report))
    return str(path)


def test_row_from_a_report(tmp_path):
    row = parity_rows([_report(tmp_path / "fcos_w8a8.export.json")])[0]
    assert row[0] == f"[fcos_w8a8]({tmp_path / 'fcos_w8a8.export.md'})"
    assert row[1:5] == ["8-bit QDQ, opset 20, 13.6 MB", "51.68", "51.75", "+0.06"]
    assert row[5] == "2.0e-06 (of 4)"  # the largest difference relative to the layer's output
    assert row[6] == "1 / 1"


def test_int4_and_negative_delta(tmp_path):
    log = [{"weight": "float", "activation": "lsq/4b QDQ UINT4", "BN": "folded"}]
    row = parity_rows([_report(tmp_path / "r.export.json", log=log, opset=21,
                               ap={"pytorch": {"AP": 21.46}, "onnxruntime": {"AP": 21.32},
                                   "delta_AP": -0.14})])[0]
    assert row[1].startswith("INT4/UINT4 QDQ, opset 21") and row[4] == "−0.14"


def test_bad_reports_are_named(tmp_path):
    with pytest.raises(ValueError, match="missing.export.json: not a readable"):
        parity_rows([str(tmp_path / "missing.export.json")])
    path = _report(tmp_path / "old.export.json")
    data = json.loads(open(path).read())
    del data["ap"]
    open(path, "w").write(json.dumps(data))
    with pytest.raises(ValueError, match="old.export.json: field 'ap' missing"):
        parity_rows([path])


def test_section_written_between_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- export-parity:begin -->\nold\n<!-- export-parity:end -->\ny\n")
    replace_section(str(readme), "| t |")
    assert readme.read_text() == "x\n<!-- export-parity:begin -->\n| t |\n<!-- export-parity:end -->\ny\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="export-parity:begin"):
        replace_section(str(readme), "| t |")
    assert readme.read_text() == "no markers\n"
