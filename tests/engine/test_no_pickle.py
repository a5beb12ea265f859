"""No plain pickle in library code, and a pickle payload in any file we load is refused unexecuted.

(a) An AST check over ``src/mmtrain``: no pickle-family import, every ``torch.load`` has
    ``weights_only=True``, ``np.load`` has ``allow_pickle=False``, yaml only with a safe loader, no
    ``eval``/``exec``/``read_pickle``/``torch.jit.load``, no ``from_pretrained`` with pickle or remote
    code switched on. The checker is itself tested on bad and good snippets.
(b) A real payload (its ``__reduce__`` imports a marker module and touches a marker file; a
    positive control shows a plain ``torch.load(weights_only=False)`` does run it) placed in every
    kind of file mmtrain reads: checkpoints (through AtomicCheckpointIO, Lightning's resume,
    ``mmtrain export``, the export callback), export folders (``AutoModel.from_pretrained``,
    ``model.init`` warm start), pretrained tower folders (``pytorch_model.bin``) and the stored
    training config (yaml tags). Each load must raise and leave no marker.
"""

from __future__ import annotations

import ast
import importlib
import json
import pathlib
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _models import tiny_export

from mmtrain.core.integrity import ArtifactDamaged, update_manifest
from mmtrain.engine.callbacks.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointCorrupt,
    UnsafeCheckpoint,
    read_manifest,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "mmtrain"

# -- (a) static check ----------------------------------------------------------------------------

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal", "copyreg"}
TORCH_LOADS = {"torch.load", "torch.serialization.load"}
UNSAFE_YAML = {"yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all",
               "yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader", "yaml.CLoader", "yaml.CUnsafeLoader",
               "yaml.CFullLoader"}
SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader", "yaml.BaseLoader", "yaml.CBaseLoader"}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``np.load`` -> ``numpy.load`` (import aliases resolved); None for calls on expressions."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def _is(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def pickle_violations(source: str, filename: str = "<snippet>") -> list[str]:
    """Every way ``source`` could unpickle (or eval) untrusted bytes, as ``file:line: what``."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}
    found: list[str] = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    flag(node, f"imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                if node.module.split(".")[0] in PICKLE_MODULES or f"{node.module}.{alias.name}" in UNSAFE_YAML:
                    flag(node, f"imports {alias.name} from {node.module}")
    for node in ast.walk(tree):
        name = _dotted(node, aliases) if isinstance(node, (ast.Attribute, ast.Name)) else None
        if name in UNSAFE_YAML:
            flag(node, f"uses {name}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases) or ""
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if name in TORCH_LOADS and not _is(keywords.get("weights_only"), True):
            flag(node, f"{name}(...) without weights_only=True")
        elif name == "numpy.load" and not _is(keywords.get("allow_pickle"), False):
            flag(node, "numpy.load(...) without allow_pickle=False")
        elif name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader, aliases) not in SAFE_YAML_LOADERS:
                flag(node, f"{name}(...) without a safe Loader")
        elif name.endswith(("read_pickle", "jit.load", "torch.package.PackageImporter")):
            flag(node, f"calls {name}")
        elif isinstance(node.func, ast.Name) and name in ("eval", "exec"):
            flag(node, f"calls {name}()")
        elif name.endswith("from_pretrained") and (
            _is(keywords.get("weights_only"), False) or _is(keywords.get("use_safetensors"), False)
            or not _is(keywords.get("trust_remote_code", ast.Constant(False)), False)
        ):
            flag(node, f"{name}(...) with weights_only=False, use_safetensors=False or trust_remote_code")
    return found


BAD = [
    "import pickle", "from pickle import loads", "import dill", "import joblib as jl", "import cloudpickle",
    "import shelve", "import marshal", "from copyreg import dispatch_table",
    "import torch\ntorch.load(f)", "import torch\ntorch.load(f, weights_only=False)",
    "import torch\ntorch.load(f, weights_only=flag)", "import torch as T\nT.load(f)",
    "from torch import load\nload(f)", "from torch import load as tl\ntl(f, map_location='cpu')",
    "import torch\ntorch.serialization.load(f)", "import numpy as np\nnp.load(f)",
    "import numpy\nnumpy.load(f, allow_pickle=True)", "import yaml\nyaml.load(s)",
    "import yaml\nyaml.load(s, Loader=yaml.Loader)", "import yaml\nyaml.load(s, yaml.FullLoader)",
    "import yaml\nyaml.unsafe_load(s)", "import yaml\nyaml.full_load(s)", "from yaml import UnsafeLoader",
    "import pandas as pd\npd.read_pickle(p)", "import torch\ntorch.jit.load(p)", "eval('1 + 1')", "exec(code)",
    "AutoModel.from_pretrained(p, trust_remote_code=True)", "M.from_pretrained(p, weights_only=False)",
    "M.from_pretrained(p, use_safetensors=False)",
]
GOOD = [
    "import torch\ntorch.load(f, map_location='cpu', weights_only=True)", "import numpy as np\nnp.load(f, allow_pickle=False)",
    "import yaml\nyaml.safe_load(s)", "import yaml\nyaml.load(s, Loader=yaml.SafeLoader)", "model.eval()",
    "from safetensors.torch import load_file\nload_file(p)", "AutoModel.from_pretrained(p, local_files_only=True)",
    "import json\njson.loads(s)", "import numpy as np\nnp.loadtxt(f, delimiter=',')", "x.load()",
]


@pytest.mark.parametrize("snippet", BAD)
def test_the_checker_catches(snippet: str) -> None:
    assert pickle_violations(snippet), snippet


@pytest.mark.parametrize("snippet", GOOD)
def test_the_checker_allows(snippet: str) -> None:
    assert pickle_violations(snippet) == [], snippet


RESTRICTED_UNPICKLER_LINE = next(i for i, line in enumerate((SRC / "engine" / "sharded_checkpoints.py").read_text()
                                                              .splitlines(), 1) if line == "import pickle")


def test_library_code_has_no_pickle_loads() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    found = [v for f in files for v in pickle_violations(f.read_text(), str(f.relative_to(SRC.parent)))]
    # one exception: the allowlisting Unpickler (find_class admits DCP's metadata classes only) that reads a
    # sharded checkpoint's .metadata before torch does; tests/engine/test_sharded_checkpoints.py runs a payload at it
    assert found == [f"mmtrain/engine/sharded_checkpoints.py:{RESTRICTED_UNPICKLER_LINE}: imports pickle"], "\n".join(found)
    weights_only = sum(f.read_text().count("torch.load(") for f in files)
    assert weights_only >= 3  # the checker saw real loads (checkpoint_io, callbacks, evaluate) and passed them


# -- (b) real payloads -------------------------------------------------------------------------


class _Touch:
    """Unpickling this touches ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (pathlib.Path.touch, (self.marker,))


class _Import:
    """Unpickling this imports ``module`` (whose import writes a marker file)."""

    def __init__(self, module: str) -> None:
        self.module = module

    def __reduce__(self):  # noqa: ANN204
        return (importlib.import_module, (self.module,))


@pytest.fixture
def payload(marker_module: tuple[str, Path], tmp_path: Path) -> SimpleNamespace:
    """``zip``: a torch.save checkpoint holding the payload; ``legacy``: the same in torch's old format.

    The positive control unpickles it *unsafely* once, to prove the payload really runs.
    """
    module, imported = marker_module
    touched = tmp_path / "TOUCHED"
    evil = {"state_dict": {"w": torch.ones(2)}, "global_step": 7, "epoch": 0,
            "hyper_parameters": {"a": _Import(module), "b": _Touch(touched)}}
    zip_file, legacy_file = tmp_path / "zip.ckpt", tmp_path / "legacy.pkl"
    torch.save(evil, zip_file)
    torch.save(evil, legacy_file, _use_new_zipfile_serialization=False)  # torch's pre-1.6 pickle format
    for control in (zip_file, legacy_file):
        torch.load(control, weights_only=False)  # positive control: plain pickle runs the payload
        assert imported.exists() and touched.exists()
        imported.unlink()
        touched.unlink()
        sys.modules.pop(module, None)
    markers = (imported, touched)
    return SimpleNamespace(zip=zip_file.read_bytes(), legacy=legacy_file.read_bytes(), markers=markers,
                           module=module, evil=evil, untouched=lambda: not any(m.exists() for m in markers))


def forge(path: Path, data: bytes) -> None:
    """Write ``data`` as ``path`` and a manifest entry matching it (an attacker who can write both)."""
    import hashlib

    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, path)  # a real entry and manifest, then overwrite both
    path.write_bytes(data)
    manifest = read_manifest(path.parent)
    manifest["checkpoints"][path.name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (path.parent / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_checkpoint_payload_with_a_matching_manifest_is_refused(payload: SimpleNamespace, tmp_path: Path,
                                                                kind: str) -> None:
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    forge(ckpt, getattr(payload, kind))
    with pytest.raises(UnsafeCheckpoint, match="refuses; it was not loaded and nothing in it was executed"):
        AtomicCheckpointIO().load_checkpoint(ckpt)
    assert payload.untouched()


def test_checkpoint_payload_is_refused_by_lightning_resume(payload: SimpleNamespace, tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    forge(ckpt, payload.zip)
    trainer = pl.Trainer(max_epochs=1, plugins=[AtomicCheckpointIO()], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    data = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8, 1)), batch_size=4)
    with pytest.raises(UnsafeCheckpoint):
        trainer.fit(_Regression(), data, ckpt_path=str(ckpt), weights_only=True)
    assert payload.untouched()


def test_a_replaced_checkpoint_is_refused_before_unpickling(payload: SimpleNamespace, tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 3, "state_dict": {}}, ckpt)
    ckpt.write_bytes(payload.zip)  # the manifest still describes the real checkpoint
    with pytest.raises(CheckpointCorrupt, match="last.ckpt is damaged"):
        AtomicCheckpointIO().load_checkpoint(ckpt)
    assert payload.untouched()


def test_a_payload_is_never_committed_as_a_checkpoint(payload: SimpleNamespace, tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(UnsafeCheckpoint, match="refusing to write checkpoint"):
        AtomicCheckpointIO().save_checkpoint(payload.evil, ckpt)
    assert not ckpt.exists() and payload.untouched()


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_mmtrain_export_and_the_export_callback_refuse_a_payload(payload: SimpleNamespace, tmp_path: Path,
                                                                 kind: str) -> None:
    from mmtrain.engine.callbacks.export import ExportCallback
    from mmtrain.app.commands.evaluate import export_checkpoint

    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(getattr(payload, kind))
    with pytest.raises(CheckpointCorrupt, match="missing from"):
        export_checkpoint(ckpt)  # `mmtrain export <checkpoint>`: unlisted, so not even unpickled
    AtomicCheckpointIO().relist(ckpt, {})  # listed with its true checksum: the weights-only load refuses it
    with pytest.raises(UnsafeCheckpoint, match="nothing in it was executed"):
        export_checkpoint(ckpt)
    trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(best_model_path=str(ckpt)))
    with pytest.raises(UnsafeCheckpoint, match="nothing in it was executed"):
        ExportCallback(run_dir=str(tmp_path)).on_fit_end(trainer, _Regression())  # best weights at fit end
    assert payload.untouched()


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """A real export folder (config.json + model.safetensors) of a tiny audio-only model."""
    return tiny_export(tmp_path / "export")


def test_export_folders_read_only_safetensors(payload: SimpleNamespace, export: Path, tmp_path: Path) -> None:
    from transformers import AutoModel

    from mmtrain.engine.warm_start import load_components

    fresh = AutoModel.from_pretrained(export)
    for kind in ("zip", "legacy"):
        (export / "pytorch_model.bin").write_bytes(getattr(payload, kind))
        (export / "model.safetensors").unlink(missing_ok=True)
        with pytest.raises(ArtifactDamaged, match="model.safetensors is missing"):
            AutoModel.from_pretrained(export)  # a .bin beside config.json is never read
        (export / "model.safetensors").write_bytes(getattr(payload, kind))  # a payload named .safetensors
        with pytest.raises(ArtifactDamaged, match="model.safetensors is damaged"):
            AutoModel.from_pretrained(export)  # its checksum is not the manifest's
        update_manifest(export)  # whoever placed it also rewrote the manifest: safetensors still parses no pickle
        with pytest.raises(Exception, match="(?i)header|safetensor|deserializ"):
            AutoModel.from_pretrained(export)
        with pytest.raises(Exception, match="(?i)header|safetensor|deserializ"):
            load_components(fresh, {"audio": str(export)})  # model.init warm start
    assert payload.untouched()


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_pretrained_tower_pytorch_model_bin_is_loaded_weights_only(payload: SimpleNamespace, tmp_path: Path,
                                                                   kind: str) -> None:
    from transformers import BertConfig, BertModel

    from mmtrain.components.encoders.hf_tower import build_hf_model

    folder = tmp_path / "tiny-bert"
    config = BertConfig(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    BertModel(config).save_pretrained(folder)
    (folder / "model.safetensors").unlink()  # a folder with only the pickle-format weights
    (folder / "pytorch_model.bin").write_bytes(getattr(payload, kind))
    with pytest.raises(Exception, match="Weights only load failed"):
        build_hf_model(BertModel, config, folder)
    assert payload.untouched()


def test_stored_training_config_yaml_tags_are_not_constructed(payload: SimpleNamespace, export: Path) -> None:
    from mmtrain.app.commands.evaluate import evaluate

    (export / "training_config.yaml").write_text(
        f"seed: !!python/object/apply:pathlib.Path.touch [{json.dumps(str(payload.markers[1]))}]\n"
        f"data: !!python/object/apply:importlib.import_module [{payload.module}]\n"
    )
    with pytest.raises(Exception, match="(?i)constructor|could not determine|python/object"):
        evaluate(export)  # `mmtrain eval <export>` reads the config before anything else
    assert payload.untouched()


class _Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.1)
