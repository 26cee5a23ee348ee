"""The way out: one trained declaration written back as a Hugging Face folder.

`write_hf(model, g, layer, out_dir)` inverts the family's `[tensors]` table (the loader's, see
mmgraph/backends/torch/pretrained.py) and `[config]` table (mmgraph/ir/passes/pretrained.py):

- a layer declared `pretrained(PATH, part=...)`: the source folder's tensors are copied and the
  part's are replaced by the layer's (the part prefix re-added), so a CLIPModel stays a whole
  CLIPModel; its config.json is copied with the keys `[config.params]` maps updated from the
  layer's parameters; its other small files (tokenizer, generation config) are copied too.
- a layer trained from scratch: only the layer's tensors, and a config.json built from the
  `[config]` table for the families that name a Hugging Face class below (FROM_SCRATCH).

LoRA adapters are merged into their base weights (W + alpha/r B A). Refused, with the
reason: a parameter no rule maps, a non-zero tensor the Hugging Face architecture has no place
for (a `zeros` rule, or an `absent = "zeros"` bias the checkpoint lacks), a `reshape` rule
without a source checkpoint to take the shape from, a parameter value the config cannot
express.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import tomllib
import torch

from mmgraph.backends.torch.pretrained import (
    ADAPTERS,
    TABLES,
    Checkpoint,
    PretrainedError,
    _fill,
    _prefix,
    _regex,
    table,
)
from mmgraph.ir.graph import Graph

# family -> (model_type, architecture) for a layer without a source checkpoint
FROM_SCRATCH = {
    "llama": ("llama", "LlamaForCausalLM"),
    "clip_vision": ("clip_vision_model", "CLIPVisionModel"),
    "clip_text": ("clip_text_model", "CLIPTextModel"),
}


def _derived(family: str, state: dict) -> dict:
    """Config keys of a from-scratch layer that its weights, not its parameters, set."""
    if family == "clip_vision":  # the image size, from the learned positions (+1: class token)
        n, patch = state["pos"].shape[0] - 1, state["patch_embed.weight"].shape[-1]
        side = round(n ** 0.5)
        if side * side != n:
            raise HFExportError(f"a clip_vision config needs a square image: {n} patches")
        return {"image_size": side * patch, "num_channels": state["patch_embed.weight"].shape[1]}
    if family == "clip_text":  # mmgraph pools at the largest id: CLIP's eos_token_id = 2 rule
        return {"bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2}
    return {}


# files of a source folder not copied (weights and config are written anew)
_SKIP = ("model.safetensors", "model.safetensors.index.json", "config.json")


class HFExportError(PretrainedError):
    """A layer that cannot be written as a Hugging Face folder, with the reason."""


def _config_table(family: str) -> dict | None:
    """The family's `[config]` table (data; the check pass reads the same), None if it has
    none."""
    path = TABLES / f"{family}.toml"
    if not path.is_file():
        return None
    data = tomllib.loads(path.read_text(encoding="utf-8")).get("config", {})
    return data if "component" in data else None


def _family(g: Graph, layer: str) -> tuple[str, Any]:
    if layer not in g.instances:
        raise HFExportError(f"{g.name} has no layer '{layer}' (layers: "
                            f"{', '.join(n for n in g.instances if '.' not in n)})")
    inst = g.instances[layer]
    if inst.pretrained is not None:
        return inst.pretrained.family, inst
    fams = [f for f in FROM_SCRATCH
            if (_config_table(f) or {}).get("component") == inst.component]
    if not fams:
        raise HFExportError(
            f"{layer} is a {inst.component} trained from scratch: no Hugging Face family "
            f"mmgraph writes from scratch is a {inst.component} (it writes "
            f"{', '.join(FROM_SCRATCH)} from scratch, any family with tables when the layer "
            "was declared pretrained(...))")
    return fams[0], inst


def _default_layer(g: Graph) -> str:
    pre = [n for n, i in g.instances.items() if i.pretrained is not None]
    if len(pre) == 1:
        return pre[0]
    raise HFExportError(f"say which layer to write with --part: {g.name} has "
                        + (f"several pretrained layers ({', '.join(pre)})" if pre else
                           "no pretrained(...) layer"))


# ---------------------------------------------------------------- config.json

def _set(config: dict, key: str, value: Any) -> None:
    *path, last = key.split(".")
    for step in path:
        config = config.setdefault(step, {})
    config[last] = value


def _has(config: dict, key: str) -> bool:
    for step in key.split("."):
        if not isinstance(config, dict) or step not in config:
            return False
        config = config[step]
    return True


def _config(family: str, inst, layer: str, source: dict | None, inst_state: dict) -> dict:
    fam = _config_table(family)
    if fam is None:
        raise HFExportError(f"family '{family}' has no [config] table: its config.json cannot "
                            "be written")
    params = inst.params
    fixed = dict(fam.get("fixed", {}))
    if source is not None:
        pre = inst.pretrained
        match = [m for m in fam.get("match", ()) if m.get("model_type") ==
                 source.get("model_type") and m.get("part") == pre.part]
        if not match:
            raise HFExportError(f"{pre.path}/config.json: no {family} table entry reads "
                                f"model_type {source.get('model_type')!r} part {pre.part!r}")
        fixed.update(match[0].get("fixed", {}))
        root = json.loads(json.dumps(source))  # a copy
        section = match[0].get("section")
        sub = root.get(section) if section else root
        if not isinstance(sub, dict):
            raise HFExportError(f"{pre.path}/config.json has no {section} object")
    else:
        model_type, arch = FROM_SCRATCH[family]
        root = sub = {"model_type": model_type, "architectures": [arch],
                      **_derived(family, inst_state)}
    for name, want in fixed.items():
        have = getattr(params, name, want)
        if have != want:
            raise HFExportError(f"{layer}.{name} is {have!r}, but a {family} checkpoint fixes "
                                f"it to {want!r}")
    for param, rule in fam.get("params", {}).items():
        rule = rule if isinstance(rule, dict) else {"key": rule}
        if not hasattr(params, param) or "times" in rule:
            continue
        value = getattr(params, param)
        if value is None:
            continue
        if "values" in rule:
            back = [k for k, v in rule["values"].items() if v == value]
            if not back:
                raise HFExportError(f"{layer}.{param} = {value!r} has no {family} config value "
                                    f"(it reads {', '.join(map(repr, rule['values'].values()))})")
            value = back[0]
        keys = rule["key"] if isinstance(rule["key"], list) else [rule["key"]]
        present = [k for k in keys if _has(root if k.startswith("/") else sub, k.lstrip("/"))]
        key = present[0] if present else keys[-1]
        _set(root if key.startswith("/") else sub, key.lstrip("/"), value)
    return root


# ---------------------------------------------------------------- tensors

def _merged(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's weights with each LoRA adapter folded into its base weight:
    W + (alpha / r) B A, computed in fp32 (Hugging Face folders hold plain weights)."""
    state = dict(module.state_dict())
    for name, sub in module.named_modules():
        if not all(hasattr(sub, a) for a in ADAPTERS):
            continue
        dot = f"{name}." if name else ""
        if getattr(sub, "segments", None) is not None:
            raise HFExportError(f"{name}: its LoRA adapts some modalities' tokens only "
                                "(lora(modalities=...)), which one merged weight cannot hold")
        with torch.no_grad():
            w = sub.weight.float() + sub.scale * (sub.lora_b.float() @ sub.lora_a.float())
        state[dot + "weight"] = w.to(sub.weight.dtype)
        for a in ADAPTERS:
            state.pop(dot + a, None)
    return state


def _tensors(module: torch.nn.Module, layer: str, family: str, pre, ckpt) -> dict:
    t = table(family)
    prefix = _prefix(ckpt, t, pre) if ckpt is not None else t.roots[0]
    have = set(ckpt.names()) if ckpt is not None else set()
    out: dict[str, torch.Tensor] = {}
    problems = []
    rules = [(r, _regex(r.ours)) for r in t.rules]
    for name, value in _merged(module).items():
        value = value.detach().to("cpu").contiguous().clone()
        for rule, rx in rules:
            m = rx.match(name)
            if not m:
                continue
            if rule.theirs is None:
                if value.count_nonzero():
                    problems.append(f"{layer}.{name} is not zero, and a {family} checkpoint "
                                    "has no such tensor")
                break
            theirs = _fill(rule.theirs, m)
            full = theirs[1:] if theirs.startswith("/") else prefix + theirs
            if rule.zeros_if_absent and full not in have:
                if value.count_nonzero():
                    problems.append(f"{layer}.{name} is not zero, and the architecture has "
                                    f"no {full}")
                break
            if rule.reshape:
                if full not in have:
                    problems.append(f"{full}: its shape is known only from a source "
                                    f"checkpoint ({layer}.{name} is reshaped)")
                    break
                value = value.reshape(ckpt.shape(full))
            out[full] = value
            break
        else:
            problems.append(f"the {family} table maps no checkpoint tensor to {layer}.{name}")
    if problems:
        raise HFExportError(f"{layer} cannot be written as a {family} checkpoint:\n  "
                            + "\n  ".join(problems))
    return out


def write_hf(model: torch.nn.Module, g: Graph, layer: str | None, out_dir: str | Path) -> dict:
    """Write the layer (default: the graph's one pretrained layer) as a Hugging Face folder:
    model.safetensors and config.json. Returns what was written."""
    from safetensors.torch import save_file

    layer = layer or _default_layer(g)
    family, inst = _family(g, layer)
    pre = inst.pretrained
    module = model.get_submodule(layer)
    if not any(True for _ in module.state_dict()):
        raise HFExportError(f"{layer} has no weights: there is nothing to write")
    ckpt = source = None
    if pre is not None:
        if Path(out_dir).resolve() == Path(pre.path).resolve():
            raise HFExportError(f"{out_dir} is the folder {layer} was loaded from: write the "
                                "fine-tuned weights to another folder")
        ckpt = Checkpoint(pre.path)
        config_path = Path(pre.path) / "config.json"
        source = json.loads(config_path.read_text(encoding="utf-8"))
    elif family not in FROM_SCRATCH:
        raise HFExportError(f"{layer} was trained from scratch and mmgraph writes a {family} "
                            "config only for a layer declared pretrained(...)")
    config = _config(family, inst, layer, source, module.state_dict())
    ours = _tensors(module, layer, family, pre, ckpt)
    tensors = {}
    if ckpt is not None:  # the rest of the source checkpoint, the part replaced
        for name in ckpt.names():
            if name not in ours:
                tensors[name] = ckpt.get(name).contiguous()
    tensors.update(ours)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("model.safetensors.index.json",):
        (out / stale).unlink(missing_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    copied = []
    if pre is not None:
        for f in sorted(Path(pre.path).iterdir()):
            if f.is_file() and f.name not in _SKIP and not f.name.endswith(".safetensors") \
                    and f.suffix not in (".bin", ".pt", ".pth", ".ckpt") \
                    and not (out / f.name).exists():
                shutil.copy2(f, out / f.name)
                copied.append(f.name)
    return {"layer": layer, "family": family, "folder": str(out),
            "written": len(ours), "kept": len(tensors) - len(ours), "copied": copied,
            "model_type": config.get("model_type")}
