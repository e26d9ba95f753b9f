"""The AP-vs-bits plot's data: one line per sweep, ablations as loose points, superseded rows out."""
import yaml

from experiments.run_files import write_run
from quant_det.experiments import dashboard, plot


def test_superseded_rows_stay_off_the_plot_and_the_png_is_written(tmp_path):
    new, old = tmp_path / "lowbit", tmp_path / "digits"
    fp32 = {"task": "FCOS", "quant": "FP32", "bits": "32/32", "variant": "Full-BN"}
    for root in (new, old):
        write_run(root, "parent", fp32, 50.0, 70.0, 55.0)
    write_run(new, "ctrl", dict(fp32, comment="control"), 53.25, 72.0, 57.0, init_from="parent")
    lsq = {"task": "FCOS", "quant": "LSQ", "bits": "2/2", "variant": "Full-BN"}
    write_run(new, "w2a2", dict(lsq, control="ctrl", supersedes=["digits/w2a2_old"]), 49.0, 69.0,
              52.0, init_from="parent")
    write_run(old, "w2a2_old", lsq, 20.0, 30.0, 10.0, init_from="parent")
    records = dashboard.collect_runs([str(new), str(old)])
    lines, ablations = plot.plot_series(records, "FCOS")
    assert lines == {("Full-BN", "LSQ", "", "lowbit", None, "parent"): [(2.0, -1.0)],
                     ("Full-BN", "LSQ", "", "lowbit", None, "control"): [(2.0, -4.25)]}
    assert ablations == []
    png = tmp_path / "plots" / "ap.png"
    plot.plot_ap_vs_bits(records, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_ablation_rows_are_points_not_joined_into_the_sweep_line(tmp_path):
    root = tmp_path / "lowbit"
    fp32 = {"task": "FCOS", "quant": "FP32", "bits": "32/32", "variant": "Full-BN"}
    write_run(root, "parent", fp32, 50.0, 70.0, 55.0)
    write_run(root, "ctrl", dict(fp32, comment="control"), 52.0, 72.0, 57.0, init_from="parent")
    lsq = {"task": "FCOS", "quant": "LSQ", "variant": "Full-BN", "control": "ctrl"}
    write_run(root, "w4a4", dict(lsq, bits="4/4"), 52.5, 70.0, 55.0, init_from="parent")
    write_run(root, "w2a2", dict(lsq, bits="2/2"), 46.0, 70.0, 55.0, init_from="parent")
    write_run(root, "w2a2_base", dict(lsq, bits="2/2", comment="ablation: knobs reverted"),
              37.0, 60.0, 40.0, init_from="parent")
    lines, ablations = plot.plot_series(dashboard.collect_runs([str(root)]), "FCOS")
    assert sorted(lines[("Full-BN", "LSQ", "", "lowbit", None, "control")]) == [(2, -6.0), (4, 0.5)]
    assert sorted(lines[("Full-BN", "LSQ", "", "lowbit", None, "parent")]) == [(2, -4.0), (4, 2.5)]
    assert sorted(ablations) == [(2, -15.0, "LSQ", "control"), (2, -13.0, "LSQ", "parent")]


def test_rows_of_different_training_length_get_separate_plot_lines(tmp_path):
    root = tmp_path / "lowbit"
    write_run(root, "parent", {"task": "FCOS", "quant": "FP32", "bits": "32/32"}, 50.0, 70.0, 55.0)
    for name, iters, ap in (("short", 500, 45.0), ("long", 1500, 49.0)):
        run_dir = write_run(root, name, {"task": "FCOS", "quant": "LSQ", "bits": "2/2"}, ap, 70.0,
                            55.0, init_from="parent").parent
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"SOLVER": {"MAX_ITER": iters}}))
    lines, _ = plot.plot_series(dashboard.collect_runs([str(root)]), "FCOS")
    assert lines[("", "LSQ", "", "lowbit", 500, "parent")] == [(2, -5.0)]
    assert lines[("", "LSQ", "", "lowbit", 1500, "parent")] == [(2, -1.0)]
