"""trainer.strategy as a YAML object: Lightning's strategy class with its arguments, allowlisted like every _target_."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch.strategies import DDPStrategy

from mmtrain.app.commands.train import build_trainer, prepare, strategy_name
from mmtrain.config.compose import compose_config
from mmtrain.config.targets import TargetNotAllowedError


def test_the_shipped_ddp_preset_builds_lightnings_strategy_with_its_arguments(tmp_path: Path) -> None:
    cfg, prefixes = prepare(compose_config(["experiment=demo", "trainer=ddp_cpu",
                                            "+trainer.strategy.gradient_as_bucket_view=true", f"run_dir={tmp_path}"]))
    trainer = build_trainer(cfg, prefixes, tmp_path, monitored=("val/macro_f1", "max"))
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.strategy.process_group_backend == "gloo"
    assert trainer.strategy._ddp_kwargs == {"find_unused_parameters": True, "gradient_as_bucket_view": True}
    assert trainer.num_devices == 2 and strategy_name(cfg.trainer.strategy) == "DDPStrategy"


def test_a_strategy_outside_the_allowlist_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    with pytest.raises(TargetNotAllowedError, match=r"config key 'trainer.strategy': _target_ 'os.system' is not allowed"):
        prepare(compose_config(["experiment=demo", "trainer=ddp_cpu", "trainer.strategy._target_=os.system",
                                f"run_dir={tmp_path}"]))


@pytest.mark.parametrize("override, message", [
    ("trainer.strategy.stage=0", r"trainer.strategy.stage \(DeepSpeed's zero_optimization.stage\) is 0: mmtrain trains "
                                 r"and resumes ZeRO stages 1, 2 and 3"),
    ("+trainer.strategy.load_full_weights=true", r"trainer.strategy.load_full_weights=true loads one full-state file"),
    ("+trainer.strategy.exclude_frozen_parameters=true", r"trainer.strategy.exclude_frozen_parameters=true leaves"),
])
def test_a_deepspeed_setting_mmtrain_cannot_resume_is_refused_naming_the_key(tmp_path: Path, override: str,
                                                                             message: str) -> None:
    cfg, prefixes = prepare(compose_config(["experiment=demo", "trainer=deepspeed_zero2", override, f"run_dir={tmp_path}"]))
    with pytest.raises(ValueError, match=message):
        build_trainer(cfg, prefixes, tmp_path, monitored=("val/macro_f1", "max"))


def test_the_deepspeed_presets_build_the_manifest_strategy_with_their_stage(tmp_path: Path) -> None:
    from mmtrain.engine.strategies import ManifestDeepSpeedStrategy

    for preset, stage, offload in (("deepspeed_zero2", 2, False), ("deepspeed_zero3_offload", 3, True)):
        cfg, prefixes = prepare(compose_config(["experiment=demo", f"trainer={preset}", f"run_dir={tmp_path}"]))
        strategy = build_trainer(cfg, prefixes, tmp_path, monitored=("val/macro_f1", "max")).strategy
        assert isinstance(strategy, ManifestDeepSpeedStrategy)
        assert strategy.config["zero_optimization"]["stage"] == stage
        assert ("offload_optimizer" in strategy.config["zero_optimization"]) == offload


def test_fsdp_v1_refuses_sharded_checkpoints_naming_the_key_and_the_fsdp2_preset() -> None:
    from mmtrain.engine.strategies import BlockWrapFSDPStrategy

    with pytest.raises(ValueError, match=r"trainer.strategy.state_dict_type must be 'full' .* use trainer=fsdp2_sharded"):
        BlockWrapFSDPStrategy(state_dict_type="sharded")
    assert BlockWrapFSDPStrategy(state_dict_type="full").kwargs.get("auto_wrap_policy") is None  # derived at setup
