"""Mapping files (--mf/--mt with brace expansion), --rule regexes and the model-quantization set."""
import pytest
import torch

from quant_det.porting import expand_braces, read_mapping_files, rename_state_dict
from quant_det.porting.rules import builtin_rules, collect_rules, parse_regex_rule


def write(path, text):
    path.write_text(text)
    return str(path)


def test_expand_braces_lists_ranges_and_order():
    assert expand_braces("a.{x,y}.{0..2}") == ["a.x.0", "a.x.1", "a.x.2", "a.y.0", "a.y.1", "a.y.2"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("plain.key") == ["plain.key"]
    with pytest.raises(ValueError, match="nested"):
        expand_braces("a{b{c,d}}")


def test_mapping_files_reproduce_hand_written_renaming(tmp_path):
    mf = write(tmp_path / "from.txt", """
# stem
conv1.weight
layer{1,2}.{0..1}.conv1.weight   # 4 keys, layer-major
fc.weight
""")
    mt = write(tmp_path / "to.txt", """
stem.conv1.weight

res2.0.conv1.weight
res2.1.conv1.weight
res3.{0..1}.conv1.weight
head.weight
""")
    keys = ["conv1.weight", "layer1.0.conv1.weight", "layer1.1.conv1.weight",
            "layer2.0.conv1.weight", "layer2.1.conv1.weight", "fc.weight", "fc.bias"]
    sd = {k: torch.full((1,), float(i)) for i, k in enumerate(keys)}
    result = rename_state_dict(sd, read_mapping_files(mf, mt))
    assert result.renamed == [
        ("conv1.weight", "stem.conv1.weight"),
        ("layer1.0.conv1.weight", "res2.0.conv1.weight"),
        ("layer1.1.conv1.weight", "res2.1.conv1.weight"),
        ("layer2.0.conv1.weight", "res3.0.conv1.weight"),
        ("layer2.1.conv1.weight", "res3.1.conv1.weight"),
        ("fc.weight", "head.weight"),
    ]
    assert result.unconverted == ["fc.bias"]
    assert result.state_dict["res3.0.conv1.weight"].item() == 3.0


def test_mapping_files_count_mismatch_names_files_and_lines(tmp_path):
    mf = write(tmp_path / "mf.txt", "a\nb{0..2}\n")
    mt = write(tmp_path / "mt.txt", "A\nB{0..1}\n")
    with pytest.raises(ValueError, match=r"mf\.txt has 4 keys, .*mt\.txt has 3.*mf\.txt:2 .*3 keys, .*mt\.txt:2 to 2"):
        read_mapping_files(mf, mt)
    mt2 = write(tmp_path / "mt2.txt", "A\nB0\nB1\n\n")
    with pytest.raises(ValueError, match=r"first unpaired key at .*mf\.txt:2"):
        read_mapping_files(mf, mt2)


def test_mapping_keys_are_literal_and_anchored(tmp_path):
    rules = read_mapping_files(write(tmp_path / "f", "conv1.weight\n"), write(tmp_path / "t", "stem.w\n"))
    result = rename_state_dict({"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1),
                                "conv1xweight": torch.zeros(1)}, rules)
    assert result.renamed == [("conv1.weight", "stem.w")]
    assert result.unconverted == ["layer1.0.conv1.weight", "conv1xweight"]


def test_regex_rules_are_anchored_ordered_and_can_drop():
    rules = [parse_regex_rule(r"head\.(\w+)\.weight=>fcos.\1.w"), parse_regex_rule(r"head\..*=>", origin="--rule #2"),
             parse_regex_rule(r"(.*)=>other.\1")]
    result = rename_state_dict({"head.cls.weight": torch.zeros(1), "head.cls.bias": torch.zeros(1),
                                "x.head.cls.weight": torch.zeros(1)}, rules, prefix="m.")
    assert result.renamed == [("head.cls.weight", "m.fcos.cls.w"), ("x.head.cls.weight", "m.other.x.head.cls.weight")]
    assert result.dropped == [("head.cls.bias", "--rule #2")]
    with pytest.raises(ValueError, match="REGEX=>REPLACEMENT"):
        parse_regex_rule("no arrow")


def test_user_rules_come_before_the_builtin_set_and_collisions_fail():
    rules = collect_rules("torchvision-resnet", regex_rules=[r"fc\.(weight|bias)=>cls.\1"])
    result = rename_state_dict({"fc.weight": torch.zeros(1), "conv1.weight": torch.zeros(1)}, rules)
    assert dict(result.renamed) == {"fc.weight": "cls.weight", "conv1.weight": "stem.conv1.weight"}
    with pytest.raises(ValueError, match="both be renamed"):
        rename_state_dict({"a": torch.zeros(1), "b": torch.zeros(1)}, [parse_regex_rule(".*=>same")])


def test_model_quantization_resnet_quantizer_keys():
    keys = ["layer1.0.conv1.weight", "layer1.0.conv1.quant_weight.clip_val",
            "layer1.0.conv1.quant_weight.iteration", "layer1.0.conv1.quant_weight.level_num",
            "layer1.0.conv1.quant_activation.clip_val", "layer3.0.downsample.0.quant_activation.basis",
            "layer1.0.conv1.quant_output.clip_val", "layer1.0.bn1.running_mean", "fc.quant_weight.clip_val"]
    result = rename_state_dict({k: torch.zeros(1) for k in keys}, builtin_rules("model-quantization-resnet"))
    assert dict(result.renamed) == {
        "layer1.0.conv1.weight": "res2.0.conv1.weight",
        "layer1.0.conv1.quant_weight.clip_val": "res2.0.conv1.weight_quantizer.clip_val",
        "layer1.0.conv1.quant_activation.clip_val": "res2.0.conv1.input_quantizer.clip_val",
        "layer3.0.downsample.0.quant_activation.basis": "res4.0.shortcut.input_quantizer.basis",
        "layer1.0.bn1.running_mean": "res2.0.conv1.norm.running_mean",
    }
    assert [k for k, _ in result.dropped] == ["layer1.0.conv1.quant_weight.iteration",
                                              "layer1.0.conv1.quant_weight.level_num"]
    assert result.unconverted == ["layer1.0.conv1.quant_output.clip_val", "fc.quant_weight.clip_val"]
