"""An LLM prompt per train source: ``data.processor.prompt.source_templates`` gives the samples of a mixture's source
their own template (checked as the main one is), and the LLM experiment trains from such a mixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmtrain.app.commands.train import train
from mmtrain.components.lm.prompt import PromptBuilder
from mmtrain.config.compose import compose_config
from mmtrain.config.targets import runtime_prefixes
from mmtrain.data.demo import ensure_demo
from mmtrain.engine.build import build_data

from .test_mixture import mixture_config

HEARD = "'<VIDEO>{video}</VIDEO><AUDIO>{audio}</AUDIO> heard <TEXT>{text}</TEXT>:<EMO>'"


@pytest.fixture
def overrides(tmp_path: Path) -> tuple[list[str], str]:
    root = ensure_demo(tmp_path / "spoken_digits", size="tiny")
    (tmp_path / "configs" / "data").mkdir(parents=True)
    (tmp_path / "configs" / "data" / "digits_mixture.yaml").write_text(mixture_config())
    return (["experiment=emotion_llm", "data=digits_mixture", f"data.prepare.root={root}", "data.prepare.size=tiny",
             "data.num_workers=0", "data.batch_size=4", f"+data.processor.prompt.source_templates.held_out={HEARD}"],
            str(tmp_path / "configs"))


@pytest.mark.slow
def test_each_source_reads_its_own_template_and_the_llm_trains(overrides: tuple[list[str], str], tmp_path: Path) -> None:
    given, configs = overrides
    datamodule = build_data(compose_config(given, config_dir=configs), runtime_prefixes())
    train_set = datamodule.splits["train"]
    samples = [train_set.at_epoch(0, i) for i in range(len(train_set))]
    first = {s["source"]: s for s in samples if isinstance(s, dict)}
    assert sorted(first) == ["digits", "held_out"]
    processor = datamodule.processor
    batch = processor.collate([first["digits"], first["held_out"]])
    prompts = [processor.tokenizer.decode(row[mask.bool()]) for row, mask in
               zip(batch["lm_input_ids"], batch["lm_attention_mask"])]
    assert " digit:<EMO>" in prompts[0] and " heard" not in prompts[0]
    assert " heard <TEXT>" in prompts[1] and " digit:" not in prompts[1]
    assert prompts[1].count("<VIDEO_PAD>") == prompts[0].count("<VIDEO_PAD>") > 0
    metrics = train(compose_config([*given, "trainer.max_epochs=1", "callbacks.progress=null", "logger.tensorboard=null",
                                    f"run_dir={tmp_path / 'run'}"], config_dir=configs))
    assert metrics["global_steps"] == 6 and "acc" in metrics["val"]


@pytest.mark.parametrize("template, message", [
    ("<VIDEO>{video}</VIDEO> heard:<EMO>", r"source_templates.web has no \{audio\} field"),
    ("<VIDEO>{video}</VIDEO><AUDIO>{audio}</AUDIO> heard:", r"source_templates.web does not contain the class token"),
    ("{video}{audio}{sound}<EMO>", r"fields? \['?sound'?\] (is|are) unknown|field \{sound\} is unknown"),
])
def test_a_bad_source_template_is_named(template: str, message: str) -> None:
    from transformers import AutoTokenizer

    from mmtrain.components.paths import resolve_pretrained_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained_path("builtin:gpt2"))
    with pytest.raises(ValueError, match=message):
        PromptBuilder(tokenizer, template="<VIDEO>{video}</VIDEO><AUDIO>{audio}</AUDIO>:<EMO>",
                      media_tokens={"video": 2, "audio": 2}, class_token="<EMO>", source_templates={"web": template})
