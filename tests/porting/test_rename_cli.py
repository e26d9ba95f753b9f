"""tools/rename_checkpoint.py: refuses to overwrite, --dry-run writes nothing, reports keys."""
import importlib.util
from pathlib import Path

import torch

TOOL = Path(__file__).resolve().parents[2] / "tools" / "rename_checkpoint.py"
spec = importlib.util.spec_from_file_location("rename_checkpoint_tool", TOOL)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def small_checkpoint(path):
    sd = {"conv1.weight": torch.randn(4, 3, 7, 7), "bn1.weight": torch.ones(4),
          "bn1.num_batches_tracked": torch.tensor(3), "fc.weight": torch.zeros(2, 4)}
    torch.save({"model": sd}, path)
    return sd


def test_refuses_to_overwrite_input_even_with_force(tmp_path, capsys):
    src = tmp_path / "in.pth"
    small_checkpoint(src)
    before = src.read_bytes()
    assert tool.main([str(src), str(src), "--rules", "torchvision-resnet", "--force"]) == 1
    assert "refusing to overwrite the input" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_refuses_existing_output_unless_force(tmp_path, capsys):
    src, dst = tmp_path / "in.pth", tmp_path / "out.pth"
    sd = small_checkpoint(src)
    dst.write_bytes(b"old")
    assert tool.main([str(src), str(dst), "--rules", "torchvision-resnet"]) == 1
    assert "--force" in capsys.readouterr().err and dst.read_bytes() == b"old"
    assert tool.main([str(src), str(dst), "--rules", "torchvision-resnet", "--force"]) == 0
    out = capsys.readouterr().out
    assert "conv1.weight -> stem.conv1.weight" in out and "unconverted (1):\n  fc.weight" in out
    model = torch.load(dst, weights_only=True)["model"]
    assert sorted(model) == ["stem.conv1.norm.weight", "stem.conv1.weight"]
    torch.testing.assert_close(model["stem.conv1.weight"], sd["conv1.weight"])
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_dry_run_writes_nothing(tmp_path, capsys):
    src, dst = tmp_path / "in.pth", tmp_path / "out.pth"
    small_checkpoint(src)
    assert tool.main([str(src), str(dst), "--rules", "torchvision-resnet", "--dry-run",
                      "--prefix", "backbone.bottom_up."]) == 0
    out = capsys.readouterr().out
    assert "conv1.weight -> backbone.bottom_up.stem.conv1.weight" in out and "nothing written" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pth"]


def test_pickled_objects_need_unsafe_pickle(tmp_path, capsys):
    import argparse

    src, dst = tmp_path / "cls.pth", tmp_path / "out.pth"
    torch.save({"state_dict": {"module.conv1.weight": torch.ones(1)}, "args": argparse.Namespace()}, src)
    assert tool.main([str(src), str(dst), "--rules", "torchvision-resnet"]) == 1
    assert "--unsafe-pickle" in capsys.readouterr().err and not dst.exists()
    assert tool.main([str(src), str(dst), "--rules", "torchvision-resnet", "--unsafe-pickle"]) == 0
    assert list(torch.load(dst, weights_only=True)["model"]) == ["stem.conv1.weight"]
