"""Pretrained checkpoints: local Hugging Face folders of ``MambaForCausalLM``,
``Mamba2ForCausalLM`` and ``LlamaForCausalLM`` in and out of :class:`DecoderLM`.

The layout is Hugging Face's: ``config.json``, ``model.safetensors`` (or shards
``model-0000i-of-0000n.safetensors`` and ``model.safetensors.index.json``) and
``tokenizer.json``. Tensors are read with ``safetensors``' NumPy API (no torch), one at a time,
straight into the target dtype and, under a mesh, straight into their FSDP sharding (only each
device's slice is copied). Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxlm.models.config import ModelConfig
from jaxlm.models.hf_config import (PretrainedError, hf_config_from_model,
                                    model_config_from_hf, weight_names)
from jaxlm.models.lm import DecoderLM
from jaxlm.parallel.mesh import fsdp_spec

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def _hf_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """jaxlm parameter -> Hugging Face tensor (see ``weight_names``)."""
    if layout == "linear":
        return array.T
    if layout == "conv":
        return array[::-1].T[:, None, :]
    return array


def _jaxlm_layout(tensor: np.ndarray, layout: str) -> np.ndarray:
    """Hugging Face tensor -> jaxlm parameter: a view, no copy."""
    if layout == "linear":
        return tensor.T
    if layout == "conv":
        return tensor[:, 0, ::-1].T
    return tensor


def local_folder(path: str | pathlib.Path, who: str = "load_pretrained") -> pathlib.Path:
    """``path`` as an existing local checkpoint folder (with a config.json); a hub name or a
    missing path is a FileNotFoundError saying that jaxlm downloads nothing."""
    folder = pathlib.Path(path).expanduser()
    if not folder.exists():
        hub_like = re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) is not None
        hint = (f" It looks like a Hugging Face hub name: jaxlm downloads nothing; download it "
                f"first (e.g. `huggingface-cli download {path} --local-dir DIR`) and pass the "
                f"local folder." if hub_like else "")
        raise FileNotFoundError(f"{who}: {str(path)!r} is not a local path.{hint}")
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise PretrainedError(f"{who}: {folder} is not a checkpoint folder (no config.json)")
    return folder


def read_hf_config(folder: pathlib.Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PretrainedError(f"load_pretrained: {folder / 'config.json'} is not valid JSON "
                              f"({e})") from None


def tensor_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """Tensor name -> the safetensors file holding it (from the index when sharded)."""
    if (folder / INDEX).is_file():
        try:
            weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise PretrainedError(f"load_pretrained: {folder / INDEX} has no valid weight_map "
                                  f"({type(e).__name__}: {e})") from None
        files = {name: folder / file for name, file in weight_map.items()}
        missing = sorted({f.name for f in files.values() if not f.is_file()})
        if missing:
            raise PretrainedError(f"load_pretrained: {folder} lacks the shards {missing} "
                                  f"named in {INDEX}")
        return files
    if (folder / SINGLE).is_file():
        return {name: folder / SINGLE for name in _keys(folder / SINGLE)}
    others = sorted(p.name for p in folder.glob("*.bin")) + sorted(
        p.name for p in folder.glob("*.safetensors"))
    raise PretrainedError(f"load_pretrained: {folder} has neither {SINGLE} nor {INDEX}"
                          + (f" (found {others}; jaxlm reads only Hugging Face's safetensors "
                             f"layout)" if others else ""))


def _open(file: pathlib.Path):
    try:
        return safe_open(str(file), framework="numpy")
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise PretrainedError(f"load_pretrained: {file} is not a readable safetensors file "
                              f"({type(e).__name__}: {e})") from None


def _keys(file: pathlib.Path) -> list[str]:
    with _open(file) as f:
        return list(f.keys())


def _variable(model: nnx.Module, path: tuple) -> nnx.Variable:
    node = model
    for part in path:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    return node


def _place(host: np.ndarray, dtype: Any, mesh: Mesh | None) -> jax.Array:
    """A host tensor (possibly a strided view) onto the device(s), cast to ``dtype``; under a
    mesh each device receives only its FSDP slice."""
    if mesh is None:
        return jnp.asarray(host, dtype)
    fsdp = dict(mesh.shape).get("fsdp", 1)
    sharding = NamedSharding(mesh, fsdp_spec(host.shape, fsdp))
    return jax.make_array_from_callback(host.shape, sharding,
                                        lambda index: np.asarray(host[index], dtype))


def load_pretrained(path: str | pathlib.Path, *, dtype: Any = None, mesh: Mesh | None = None
                    ) -> tuple[DecoderLM, Any]:
    """Loads a local Hugging Face folder of ``MambaForCausalLM``, ``Mamba2ForCausalLM`` (any
    ``n_groups``) or ``LlamaForCausalLM`` as a :class:`DecoderLM` computing the same logits.

    Args:
      path: a local folder with ``config.json``, ``model.safetensors`` (or shards and
        ``model.safetensors.index.json``) and optionally ``tokenizer.json``.
      dtype: the parameters' dtype (default float32); each tensor is cast as it is read.
      mesh: place every parameter straight into its FSDP sharding on this mesh
        (``jaxlm.parallel.fsdp_spec``; replicated without an ``fsdp`` axis).

    Returns:
      (model, tokenizer): the model (``model.config`` is its ModelConfig) and a
      ``tokenizers.Tokenizer`` from ``tokenizer.json`` (None when the folder has none).

    Raises:
      FileNotFoundError: ``path`` does not exist (a hub name: download it first).
      PretrainedError: an unsupported architecture, config fields jaxlm cannot honour (all
        listed), or a partial or corrupt folder (missing shards or tensors, wrong shapes,
        unreadable files), each in one line naming the file or tensor.
    """
    folder = local_folder(path)
    family, config = model_config_from_hf(read_hf_config(folder), f"load_pretrained: "
                                                                  f"{folder / 'config.json'}")
    model = load_weights(folder, family, config, dtype=dtype, mesh=mesh)
    return model, load_tokenizer(folder)


def pretrained_config(path: str | pathlib.Path) -> ModelConfig:
    """The ModelConfig of a local Hugging Face folder (its config.json only)."""
    folder = local_folder(path)
    return model_config_from_hf(read_hf_config(folder), f"{folder / 'config.json'}")[1]


def load_weights(folder: pathlib.Path, family: str, config: ModelConfig, *, dtype: Any = None,
                 mesh: Mesh | None = None) -> DecoderLM:
    """The DecoderLM of ``config`` with its parameters read from ``folder``'s safetensors."""
    dtype = jnp.dtype(dtype or jnp.float32)
    model = nnx.eval_shape(lambda: DecoderLM(config, rngs=nnx.Rngs(0)))
    model.embed.dtype = dtype  # nnx.Embed fixes its compute dtype at construction (float32)
    files = tensor_files(folder)
    rules = weight_names(family, config)
    missing = [name for name, _, _ in rules if name not in files]
    if missing:
        raise PretrainedError(f"load_pretrained: {folder} lacks the tensors {missing[:8]}"
                              f"{' ...' if len(missing) > 8 else ''} ({len(missing)} missing)")
    by_file: dict[pathlib.Path, list] = {}
    for rule in rules:
        by_file.setdefault(files[rule[0]], []).append(rule)
    for file, file_rules in by_file.items():
        with _open(file) as f:
            for name, path, layout in file_rules:
                variable = _variable(model, path)
                try:
                    tensor = f.get_tensor(name)
                except Exception as e:
                    raise PretrainedError(f"load_pretrained: {file}: tensor {name} cannot be "
                                          f"read ({type(e).__name__}: {e})") from None
                host = _jaxlm_layout(tensor, layout)
                want = tuple(variable.value.shape)
                if host.shape != want:
                    raise PretrainedError(
                        f"load_pretrained: {file}: tensor {name} has shape "
                        f"{list(tensor.shape)}; config.json implies "
                        f"{list(_hf_layout(np.empty(want, np.int8), layout).shape)}")
                variable.value = _place(host, dtype, mesh)
                del tensor, host
    unfilled = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(
        nnx.state(model))[0] if isinstance(x, jax.ShapeDtypeStruct)]
    if unfilled:  # a mapping bug, not a user error
        raise AssertionError(f"load_pretrained: parameters not set from the checkpoint: {unfilled}")
    return model


def load_tokenizer(folder: pathlib.Path):
    """``tokenizers.Tokenizer`` of ``folder/tokenizer.json``, or None without one."""
    file = folder / "tokenizer.json"
    if not file.is_file():
        return None
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_file(str(file))
    except Exception as e:
        raise PretrainedError(f"load_pretrained: {file} is not a readable tokenizer "
                              f"({type(e).__name__}: {e})") from None


def save_pretrained(model: DecoderLM, path: str | pathlib.Path, *, tokenizer: Any = None,
                    max_shard_bytes: int | None = None) -> pathlib.Path:
    """Writes ``model`` as a Hugging Face folder (``config.json`` and safetensors, in the
    parameters' dtype) that transformers loads as ``MambaForCausalLM``, ``Mamba2ForCausalLM``
    or ``LlamaForCausalLM`` and that computes the same logits; with ``tokenizer`` (a
    ``tokenizers.Tokenizer``) also ``tokenizer.json``. Files are split into shards of at most
    ``max_shard_bytes`` (plus an index) when given. Returns the folder.

    Raises PretrainedError when the model has no Hugging Face equivalent (listing why: another
    pattern, n-gram heads, learned positions, a Mamba with an MLP, a sliding window, ...)."""
    config = model.config
    dtype_name = jnp.dtype(model.embed.embedding.value.dtype).name
    hf = hf_config_from_model(config, dtype_name)
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, path_, layout in weight_names(hf["model_type"], config):
        array = np.asarray(jax.device_get(_variable(model, path_).value))
        tensor = np.ascontiguousarray(_hf_layout(array, layout))
        if max_shard_bytes and shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    for stale in list(folder.glob("model*.safetensors")) + [folder / INDEX]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], str(folder / SINGLE), metadata={"format": "pt"})
    else:
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(folder / file), metadata={"format": "pt"})
            weight_map.update({name: file for name in shard})
            total += sum(t.nbytes for t in shard.values())
        (folder / INDEX).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    if tokenizer is not None:
        tokenizer.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))
    return folder
