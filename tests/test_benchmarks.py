"""The benchmark scripts in their tiny mode: they produce their tables (JSON + markdown, rendered into
a README block) and skip absent peers with a note. Timings are not checked."""
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    path = os.path.join(REPO, "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def readme(tmp_path):
    path = tmp_path / "README.md"
    blocks = "".join(f"<!-- bench:{n}:begin -->\nold\n<!-- bench:{n}:end -->\n" for n in ("quantizers", "qat_step", "peers"))
    path.write_text("# title\n" + blocks + "tail\n")
    return path


def test_render_into_replaces_only_its_block(readme):
    common = load("common")
    common.render_into(str(readme), "peers", "| a |\n|---|\n| 1 |")
    text = readme.read_text()
    assert "<!-- bench:peers:begin -->\n| a |\n|---|\n| 1 |\n<!-- bench:peers:end -->" in text
    assert text.count("old") == 2 and text.startswith("# title") and text.endswith("tail\n")
    with pytest.raises(SystemExit):
        common.render_into(str(readme), "missing", "x")


def test_bench_quantizers_tiny(tmp_path, readme):
    out = tmp_path / "q.json"
    data = load("bench_quantizers").main(["--tiny", "--json", str(out), "--readme", str(readme)])
    saved = json.loads(out.read_text())
    labels = [row[0] for row in saved["tables"]["activations"]["rows"]]
    assert labels[0] == "relu" and "lqnet act 4b" in labels
    assert "Target (LQ-Net activation quantizer" in data["markdown"]
    assert "| lqnet act 4b |" in readme.read_text()


def test_bench_qat_step_tiny(tmp_path, readme):
    out = tmp_path / "s.json"
    load("bench_qat_step").main(["--tiny", "--variants", "LQ-Net W2A2", "--json", str(out),
                                 "--readme", str(readme)])
    saved = json.loads(out.read_text())
    rows = saved["results"]["retinanet"]
    assert set(rows) == {"FP32", "LQ-Net W2A2"}
    assert rows["LQ-Net W2A2"]["cpu_ratio"] > 0 and rows["LQ-Net W2A2"]["peak_ratio"] > 0
    text = readme.read_text()
    assert "| LQ-Net W2A2 |" in text and "Target (no method's step above 1.5x" in text


def test_bench_peers_tiny_skips_absent_peers(tmp_path, readme):
    out = tmp_path / "p.json"
    load("bench_peers").main(["--tiny", "--models", "resnet18", "--missing", "torchao", "brevitas", "nncf",
                              "--json", str(out), "--readme", str(readme)])
    rows = json.loads(out.read_text())["results"]["resnet18"]
    for peer in ("torchao IntxFakeQuantizer", "brevitas", "NNCF"):
        assert rows[peer]["skipped"].startswith("not installed")
    for measured in ("quant_det LSQ", "torch.ao FakeQuantize", "torch.ao _LearnableFakeQuantize"):
        assert rows[measured]["cpu_ratio"] > 0, rows[measured]
    text = readme.read_text()
    assert "| brevitas | skipped: not installed" in text and "| quant_det LSQ |" in text


@pytest.mark.slow
def test_bench_peers_tiny_installed_peers_wrap_resnet18(tmp_path):
    """Every installed peer wraps ResNet-18 (absent ones are skipped); NNCF may build its
    kernels here on first use."""
    out = tmp_path / "p.json"
    load("bench_peers").main(["--tiny", "--models", "resnet18", "--json", str(out)])
    results = json.loads(out.read_text())["results"]
    for model, rows in results.items():
        for row, r in rows.items():
            assert "cpu_ratio" in r or r["skipped"].startswith("not installed"), (model, row, r)
