"""Bits parsing and run ids shared by the dashboard's tables and plot."""
import pytest

from quant_det.experiments import comparisons


def test_bits_are_activation_over_weight():
    assert comparisons.parse_bits("2/4") == (2.0, 4.0)
    assert comparisons.parse_bits("ter/ter") == (1.58, 1.58)
    with pytest.raises(ValueError, match="'4': expected 'A/W'"):
        comparisons.parse_bits("4")


def test_run_id_is_run_set_and_row():
    assert comparisons.run_id({"path": "experiments/lowbit/fcos_w2a2/run.json"}) == "lowbit/fcos_w2a2"
