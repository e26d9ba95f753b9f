"""read_checkpoint / strip_module_prefix: the one reader that the runtime loaders, the classifier's
init and the renaming tool share, so each reports a bad file the same way, naming it."""
import pytest
import torch
from torch import nn

from quant_det.checkpoint import load_double_init, read_checkpoint, strip_module_prefix
from quant_det.experiments.classifier import build_classifier
from quant_det.porting.rename import read_source_state_dict


def test_strip_module_prefix_keeps_order_and_values():
    one, two = torch.ones(1), torch.zeros(2)
    stripped = strip_module_prefix({"module.b": one, "a": two, "x.module.c": one})
    assert list(stripped) == ["b", "a", "x.module.c"]
    assert stripped["b"] is one and stripped["a"] is two


def test_strip_module_prefix_refuses_to_merge_two_keys():
    with pytest.raises(ValueError, match=r"\['w'\] .* both with and without 'module.'"):
        strip_module_prefix({"module.w": torch.ones(1), "w": torch.zeros(1)})


def test_bare_state_dict_comes_back_wrapped(tmp_path):
    path = tmp_path / "bare.pth"
    torch.save({"weight": torch.arange(3.0)}, path)
    data = read_checkpoint(str(path))
    assert list(data["model"]) == ["weight"] and data["model"]["weight"].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("content, message", [
    (None, "checkpoint file {} not found"),
    (b"", r"checkpoint file {} is empty \(0 bytes\)"),
    (b"not a checkpoint\n", r"cannot read checkpoint file {} \(truncated, or not a checkpoint\?\)"),
])
def test_every_reader_names_the_bad_file(tmp_path, content, message):
    """The same missing/empty/foreign file gives the same error through all four readers."""
    path = tmp_path / "bad.pth"
    if content is not None:
        path.write_bytes(content)
    error = FileNotFoundError if content is None else ValueError
    readers = [lambda: read_checkpoint(str(path)), lambda: read_source_state_dict(str(path)),
               lambda: load_double_init(nn.Linear(2, 2), "", str(path)),
               lambda: build_classifier(init=str(path))]
    for read in readers:
        with pytest.raises(error, match=message.format(repr(str(path)))):
            read()


def test_renaming_reader_strips_module_and_unwraps_state_dict(tmp_path):
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {"module.conv1.weight": torch.ones(2), "module.fc.bias": torch.zeros(1)},
                "epoch": torch.tensor(3)}, path)
    state = read_source_state_dict(str(path))
    assert list(state) == ["conv1.weight", "fc.bias"] and state["conv1.weight"].tolist() == [1.0, 1.0]
