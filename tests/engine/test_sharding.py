"""FSDP2 sharding (mmtrain.engine.sharding): which classes are blocks, what stays in the root unit, and an LLM-decoder
model sharded over 2 real gloo processes giving what the unsharded model gives: class logits, gradients, greedy
answers (ranks that finish at different steps included) and answer scores; a full state dict loads into the shards.
Training runs end to end in tests/integration/test_ddp.py."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _dist import report_and_end, run_two_ranks
from models.test_llm_model import batch, make

from mmtrain.engine.sharding import block_class_names, plain_class, shard_model

MAX_NEW = 4


def test_blocks_are_what_the_models_inside_declare() -> None:
    model, _ = make()
    names = block_class_names(model)
    assert "GPT2Block" in names  # transformers' GPT-2 declares its block (_no_split_modules)
    assert {"TransformerEncoderLayer", "TransformerDecoderLayer"} <= names


def test_an_lm_decoder_stays_in_the_root_unit_and_its_entry_points_are_named() -> None:
    model, _ = make()
    assert "decoder" in model.components() and "decoder" not in model.shard_units()  # embedding table, LM head
    assert set(model.shard_units()) == {"video", "audio", "projector", "head"}
    assert {"generate_answers", "score_answers"} <= set(model.sharded_entry_points)


def test_quantized_weights_are_refused_by_name() -> None:
    import bitsandbytes as bnb

    layer = torch.nn.Sequential(bnb.nn.Linear4bit(16, 16, quant_type="nf4"))
    with pytest.raises(ValueError, match=r"does not shard bitsandbytes-quantized weights \(Params4bit: QLoRA"):
        shard_model(layer, mesh=None)


def _inputs(prompt) -> tuple[dict, dict]:
    """The test batch for forward (with labels) and for generation (prompts, no answer keys)."""
    full = batch(prompt)
    keep = {k: v for k, v in full.items() if isinstance(v, torch.Tensor)}
    forward = {k: v for k, v in keep.items() if not k.startswith("lm_prompt")}
    generate = {k: v for k, v in keep.items() if k not in ("lm_input_ids", "lm_attention_mask")}
    return {**forward, "labels": torch.tensor([0, 1, 1])}, generate


def _llm_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a rank left waiting in a collective (generation stopping on one rank alone) fails the test in 60 s
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule

    from mmtrain.engine.sharding import load_full_state

    model, prompt = make()
    model.eval()  # no dropout: the sharded and unsharded passes see the same function
    forward, generate = _inputs(prompt)
    out = model(**forward)
    out.loss.backward()
    reference = {"logits": out.logits.detach(), "grads": {n: p.grad.clone() for n, p in model.named_parameters()
                                                          if p.grad is not None}}
    model.zero_grad(set_to_none=True)
    # rank 0's eos ids are the first tokens it answers: every row ends at step 1, unless rank 1 (answering on with
    # an eos it never meets) keeps it going, as it must when every step gathers the LM's shards
    first = model.generate_answers(**generate, max_new_tokens=1, eos_token_id=[0], pad_token_id=0)[:, 0].tolist()
    eos = sorted(set(first)) if rank == 0 else [int(model.decoder.vocab_size) - 1]
    alone = model.generate_answers(**generate, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=0)
    candidates = [[5, 6], [7], [first[0], 8, 9]]
    scores = model.score_answers(**generate, candidates=candidates)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    counts = shard_model(model, init_device_mesh("cpu", (world,)))
    result = {"counts": counts, "decoder_is_unit": isinstance(model.decoder, FSDPModule),
              "block_is_unit": isinstance(model.decoder.lm.transformer.h[0], FSDPModule),
              "plain_class": plain_class(model).__name__, "alone_shape": list(alone.shape)}
    out = model(**forward)
    out.loss.backward()
    result["logits"] = float((out.logits.detach() - reference["logits"]).abs().max())
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}  # collective
    assert grads.keys() == reference["grads"].keys(), grads.keys() ^ reference["grads"].keys()
    result["grads"] = max(float((g - reference["grads"][n]).abs().max()) for n, g in grads.items())
    together = model.generate_answers(**generate, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=0)
    result["together"], result["alone"] = together.tolist(), alone.tolist()
    result["scores"] = float((model.score_answers(**generate, candidates=candidates) - scores).abs().max())
    with torch.no_grad():  # move the shards, then load the full state dict back (tied LM head and embedding)
        for p in model.parameters():
            p.add_(1.0)
    load_full_state(model, state)
    now = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in model.state_dict().items()}
    result["reloaded"] = max(float((now[k] - v).abs().max()) for k, v in state.items())
    report_and_end(out_dir, rank, result)


@pytest.mark.slow  # two interpreters importing torch + transformers (~10 s on 2 busy cores)
def test_an_llm_model_sharded_over_two_ranks_computes_what_it_computes_whole(tmp_path: Path) -> None:
    ranks = run_two_ranks(_llm_worker, tmp_path)
    for result in ranks:
        assert result["counts"] == {"blocks": 2, "components": 5}  # 2 GPT-2 blocks; video, audio, 2 projectors, head
        assert not result["decoder_is_unit"] and result["block_is_unit"]
        assert result["plain_class"] == "LLMModel"
        assert result["logits"] <= 1e-5 and result["scores"] <= 1e-4, result
        assert result["grads"] <= 1e-5, result  # same batch on both ranks: the averaged gradient is the whole one
        assert result["reloaded"] == 0.0
    zero, one = ranks
    assert zero["alone_shape"] == [3, 1] and one["alone_shape"] == [3, MAX_NEW]  # alone, rank 0 would stop at once
    assert [row[:1] for row in zero["together"]] == zero["alone"]  # together it goes on, writing padding
    assert all(row[1:] == [0] * (MAX_NEW - 1) for row in zero["together"])
    assert one["together"] == one["alone"]


def test_fsdp_v1_wraps_each_declared_block_class() -> None:
    from mmtrain.engine.sharding import block_wrap_policy

    model, _ = make()
    policy = block_wrap_policy(model)
    assert {cls.__name__ for cls in policy._module_classes} == {"GPT2Block"}  # the only declared block inside
