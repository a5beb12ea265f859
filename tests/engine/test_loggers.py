"""MLflow (local SQLite store) and W&B (offline) loggers in real tiny runs, alone or beside TensorBoard.

What the runs logged is read back with the libraries' own formats: MLflow's client on the run's
``mlflow.db``, and the protobuf records of W&B's ``run-<id>.wandb`` file.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mmtrain.config.compose import compose_config

# 16 tiny samples, batch 4: 4 optimizer steps per epoch, 8 in all; every step logged.
TINY = [
    "experiment=demo", "data.prepare.size=tiny", "data.batch_size=4", "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1", "callbacks.progress=null", "evaluate_unimodal=false",
    "callbacks.grad_audit=null",
]
STEPS = 8
VAL_POINTS = 3  # one per epoch, plus the re-score of the best weights after fit


def test_logger_options_compose_alone_and_together() -> None:
    assert list(compose_config(["logger=mlflow"]).logger) == ["mlflow"]
    assert list(compose_config(["logger=wandb"]).logger) == ["wandb"]
    both = compose_config(["logger=[tensorboard,mlflow,wandb]"])
    assert list(both.logger) == ["tensorboard", "mlflow", "wandb"]
    assert "logger" not in compose_config(["~logger"])


def test_the_default_logger_never_imports_mlflow_or_wandb(tmp_path: Path) -> None:
    """Both are imported only by their own loggers: a TensorBoard run pays nothing for them."""
    code = (
        "import sys\n"
        "from mmtrain.config.compose import compose_config\n"
        "from mmtrain.engine.build import build_loggers\n"
        "from mmtrain.app.commands.train import prepare\n"
        "cfg, prefixes = prepare(compose_config(['logger=[mlflow,wandb]']))  # validation binds, imports nothing\n"
        "cfg, prefixes = prepare(compose_config([f'run_dir={sys.argv[1]}']))\n"
        "loggers = build_loggers(cfg, prefixes)\n"
        "print(sorted(type(x).__name__ for x in loggers), sorted(m for m in ('mlflow', 'wandb') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "['TensorBoardLogger'] []"


@pytest.mark.slow
def test_mlflow_beside_tensorboard_logs_metrics_and_config_to_a_store_in_the_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mmtrain.app.commands.train import train

    monkeypatch.chdir(tmp_path)  # the demo set is built under ./data
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "run"
    metrics = train(compose_config([*TINY, "logger=[tensorboard,mlflow]", f"run_dir={run_dir}"]))

    assert (run_dir / "mlflow.db").is_file()
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("demo")  # ${name}
    assert experiment is not None
    assert experiment.artifact_location == f"file://{run_dir}/mlflow-artifacts"
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == str(run_dir)
    assert run.info.status == "FINISHED"

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    train_loss = history("train/loss_step")
    assert [step for step, _ in train_loss] == list(range(STEPS))
    val_f1 = history("val/macro_f1")
    assert len(val_f1) == VAL_POINTS
    assert val_f1[-1][1] == pytest.approx(metrics["val"]["macro_f1"])
    assert [v for _, v in history("test/acc")] == [pytest.approx(metrics["test"]["acc"])]
    params = run.data.params  # the resolved config, flattened with "/"
    assert params["name"] == "demo" and params["seed"] == "0"
    assert params["trainer/max_epochs"] == "2" and params["data/batch_size"] == "4"
    assert params["logger/mlflow/tracking_uri"] == f"sqlite:///{run_dir}/mlflow.db"

    events = EventAccumulator(str(run_dir / "tensorboard"))  # the default logger is still there
    events.Reload()
    assert len(events.Scalars("train/loss_step")) == STEPS


# --- W&B ---------------------------------------------------------------------------------------


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a ``run-<id>.wandb`` file (LevelDB log format behind a W&B header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B datastore file"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind == 2 else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def item_key(item: Any) -> str:
    """A history or config item's key (W&B stores it in ``key`` or, split, in ``nested_key``)."""
    return item.key or "/".join(item.nested_key)


def no_network_prefix() -> list[str]:
    """``unshare --net --`` where this user may make a network namespace (loopback only), else nothing."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "--net", "true"], capture_output=True).returncode == 0:
        return [unshare, "--net", "--"]
    return []


@pytest.mark.slow
def test_wandb_offline_run_writes_its_history_under_the_run_dir_without_network(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({
        "HOME": str(home),  # no stored login, and nothing written to the real home
        "WANDB_MODE": "online",  # the config, not the environment, makes the run offline
        "WANDB_BASE_URL": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",  # any request would fail at once
    })
    code = (
        "import sys, torch\n"
        "torch.set_num_threads(1)\n"
        "from mmtrain.config.compose import compose_config\n"
        "from mmtrain.app.commands.train import train\n"
        "train(compose_config(sys.argv[1:]))\n"
    )
    isolated = no_network_prefix()  # with a network namespace, a connection attempt cannot even leave
    out = subprocess.run([*isolated, sys.executable, "-c", code, *TINY, "logger=wandb", f"run_dir={run_dir}"],
                         cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]

    [folder] = (run_dir / "wandb").glob("offline-run-*")
    [datastore] = folder.glob("run-*.wandb")
    records = wandb_records(datastore)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "exit" in kinds  # the run was closed, not cut off
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "demo" and run.display_name == str(run_dir)
    assert datastore.name == f"run-{run.run_id}.wandb"
    config = {item_key(u): json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["trainer"]["max_epochs"] == 2 and config["name"] == "demo"
    rows = [{item_key(i): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    assert sorted(row["trainer/global_step"] for row in rows if "train/loss_step" in row) == list(range(STEPS))
    assert len([row for row in rows if "val/macro_f1" in row]) == VAL_POINTS
    assert len([row for row in rows if "test/acc" in row]) == 1

    logs = "".join(p.read_text(errors="replace") for p in folder.glob("logs/*.log"))
    assert '"level":"ERROR"' not in logs and "127.0.0.1:9" not in logs
    assert not (home / ".netrc").exists()
    assert not (tmp_path / "wandb").exists()  # nothing beside the run dir


def test_a_wandb_run_left_open_is_finished_before_the_next_run_builds_its_loggers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stages and folds train in one process: each run gets its own W&B run, not the previous one."""
    import wandb

    from mmtrain.engine.build import build_loggers
    from mmtrain.app.commands.train import prepare

    monkeypatch.setenv("WANDB_MODE", "offline")  # WandbLogger sets it; monkeypatch restores it afterwards
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    ids = []
    try:
        for name in ("a", "b"):
            cfg, prefixes = prepare(compose_config(["logger=wandb", f"run_dir={tmp_path / name}"]))
            [logger] = build_loggers(cfg, prefixes)  # logs the config: the W&B run starts here
            ids.append(logger.experiment.id)
            assert wandb.run is logger.experiment
    finally:
        wandb.finish()
    assert ids[0] != ids[1]
    for name, run_id in zip(("a", "b"), ids):
        [datastore] = (tmp_path / name / "wandb").glob(f"offline-run-*/run-{run_id}.wandb")
        # W&B's service process writes the store: on a loaded machine its last block can land a moment
        # after finish() returned (seen once in a full suite: the file held no record yet)
        deadline = time.monotonic() + 30
        while "exit" not in (kinds := [r.WhichOneof("record_type") for r in wandb_records(datastore)]):
            assert time.monotonic() < deadline, f"run {name} has no exit record after 30 s: {kinds}"
            time.sleep(0.2)


@pytest.mark.parametrize(("logger", "module"), [("wandb", "wandb"), ("mlflow", "mlflow")])
def test_a_logger_whose_extra_is_missing_is_refused_naming_the_extra(
        monkeypatch: pytest.MonkeyPatch, logger: str, module: str) -> None:
    from mmtrain.app.commands.train import prepare
    from mmtrain.config.compose import ConfigError

    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: `import` raises ImportError
    with pytest.raises(ConfigError, match=rf"needs the {module} package.*pip install 'mmtrain\[{logger}\]'"):
        prepare(compose_config(["experiment=demo", f"logger={logger}"]))
    prepare(compose_config(["experiment=demo", "logger=tensorboard"]))  # others are unaffected
