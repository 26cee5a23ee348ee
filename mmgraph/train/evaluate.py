"""`mmgraph eval`: the metric each kind of objective calls for, read off the checked graph.

- a contrastive loss between an image-side and a text-side output: zero-shot classification
  accuracy (class prompts against test images) and image-text retrieval recall@1/5;
- a cross-entropy loss on an output's logits: classification accuracy;
- a next-token loss: perplexity.
"""

from __future__ import annotations

import math

import torch

from mmgraph.ir.graph import Graph, Ref

IMAGE_KINDS = ("Image", "Video", "Audio", "Mel", "Points")


def _loss_calls(g: Graph, component: str):
    for term in g.losses.values():
        node = g.nodes[term.value.node]
        if node.op == "call" and g.instances[node.target].component == component:
            yield term, node


def _output_name(g: Graph, ref: Ref) -> str | None:
    return next((k for k, r in g.outputs.items() if r == ref), None)


def _side(g: Graph, ref: Ref) -> str:
    kinds = {g.nodes[n].type.kind for n in g.ancestors(ref.node) | {ref.node}
             if g.nodes[n].op == "input"}
    return "image" if kinds & set(IMAGE_KINDS) else "text" if "Tokens" in kinds else "?"


@torch.no_grad()
def _embed(model, batches, key: str) -> torch.Tensor:
    outs = []
    for batch in batches:
        out = model(**batch)
        outs.append(out[key].float())
    return torch.cat(outs)


def _class_prompts(source) -> list[str] | None:
    if hasattr(source, "class_prompts"):
        return list(source.class_prompts())
    if getattr(source, "name", None) == "digits":
        from mmgraph.train.sources import digits_class_prompts
        return digits_class_prompts()
    if getattr(source, "classes", None):
        return [f"a photo of a {c.replace('_', ' ')}" for c in source.classes]
    return None


def _recall(sim: torch.Tensor, k: int, same: torch.Tensor | None = None) -> float:
    """Fraction of rows whose own column (or, with `same`, any column of an identical
    caption) is among their k most similar."""
    top = sim.topk(min(k, sim.shape[1]), dim=1).indices
    if same is None:
        target = torch.arange(sim.shape[0])[:, None]
        return float((top == target).any(dim=1).float().mean())
    return float(same.gather(1, top).any(dim=1).float().mean())


def ordered_batches(dataset, batch_size: int):
    """The dataset in its own order (evaluation needs labels to line up)."""
    from mmgraph.train.batching import collate

    for start in range(0, len(dataset), batch_size):
        yield collate([dataset[i] for i in range(start, min(start + batch_size,
                                                             len(dataset)))])


def eval_source(data: str, split: str, trained_on: dict | None, allow_outside: bool = False):
    """The data `mmgraph eval` reads, and how to say what it is: the `split` of `data`; when
    the data has no such split, the whole file or folder, refused when it is what the
    checkpoint was trained on (`trained_on`: the checkpoint's record of its data), since
    evaluating on training data is asked for only with split "train"."""
    from mmgraph.train.sources import DataError, open_source, split_file

    source = open_source(data, split, allow_outside=allow_outside)
    if source.split == split:
        return source, f"{source.name}, split {split}"
    if split == "train":
        return source, f"{source.name}, split train (the whole file, the training data)"
    where = split_file(data, split)
    if trained_on and source.origin == trained_on.get("train"):
        raise DataError(f"{data} has no {split} split ({where} not found), and {source.name} "
                        f"is the data the checkpoint was trained on; give held-out data with "
                        f"--data, or evaluate on the training data with --split train")
    known = "" if trained_on else "; the checkpoint does not record its training data"
    return source, f"{source.name}, the whole file (no {split} split: {where} not found{known})"


def evaluate(model, g: Graph, source, dataset, tokenizer, batch_size: int = 128) -> dict:
    data = list(ordered_batches(dataset, batch_size))
    results: dict = {"examples": len(dataset)}

    for term, node in _loss_calls(g, "contrastive"):
        a, b = (ref for _, ref in node.inputs)
        names = {_side(g, a): _output_name(g, a), _side(g, b): _output_name(g, b)}
        if None in names.values() or set(names) != {"image", "text"}:
            continue
        img_key, txt_key = names["image"], names["text"]
        image_emb = _embed(model, data, img_key)
        text_emb = _embed(model, data, txt_key)
        sim = image_emb @ text_emb.t()
        captions = [str(dataset.raw(i).get("text", i)) for i in range(len(dataset))]
        index = {c: n for n, c in enumerate(dict.fromkeys(captions))}
        ids = torch.tensor([index[c] for c in captions])
        same = ids[:, None] == ids[None, :]  # identical captions count as a hit
        metrics = {"image_to_text_r1": _recall(sim, 1, same),
                   "image_to_text_r5": _recall(sim, 5, same),
                   "text_to_image_r1": _recall(sim.t(), 1, same),
                   "text_to_image_r5": _recall(sim.t(), 5, same)}
        prompts = _class_prompts(source)
        labels = _labels(dataset)
        text_input = next((n for n in g.inputs if g.nodes[n].type.kind == "Tokens" and
                           not model.inputs[n].loss_only), None)
        if prompts and labels is not None and text_input is not None:
            length = data[0][text_input].shape[1]
            prompt_ids = torch.tensor([tokenizer.encode(p, length) for p in prompts])
            dummy = {k: v[:1].expand(len(prompts), *v.shape[1:]).clone()
                     for k, v in data[0].items()}
            dummy[text_input] = prompt_ids.to(dummy[text_input].dtype)
            with torch.no_grad():
                prompt_emb = model(**dummy)[txt_key].float()
            pred = (image_emb @ prompt_emb.t()).argmax(dim=1)
            metrics["zero_shot_accuracy"] = float((pred == labels).float().mean())
            metrics["classes"] = len(prompts)
        results[f"contrastive/{term.name}"] = metrics

    for term, node in _loss_calls(g, "cross_entropy"):
        logits_ref, labels_ref = (ref for _, ref in node.inputs)
        key = _output_name(g, logits_ref)
        if key is None or g.nodes[labels_ref.node].op != "input":
            continue
        correct = total = 0
        with torch.no_grad():
            for batch in data:
                pred = model(**batch)[key].argmax(-1)
                target = batch[labels_ref.node]
                correct += int((pred == target).sum())
                total += target.numel()
        results[f"classification/{term.name}"] = {"accuracy": correct / max(total, 1)}

    for term, _ in _loss_calls(g, "next_token"):
        values = []
        with torch.no_grad():
            for batch in data:
                values.append(float(model.losses(**batch)[term.name]))
        mean = sum(values) / max(len(values), 1)
        results[f"language_model/{term.name}"] = {"loss": mean, "perplexity": math.exp(mean)}
    return results


def _labels(dataset) -> torch.Tensor | None:
    try:
        return torch.tensor([int(dataset.raw(i)["label"]) for i in range(len(dataset))])
    except (KeyError, TypeError, ValueError):
        return None


def headline(results: dict) -> list[str]:
    """The lines people look for first."""
    lines = []
    for key, metrics in results.items():
        if not isinstance(metrics, dict):
            continue
        parts = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                 for k, v in metrics.items()]
        lines.append(f"{key}: " + ", ".join(parts))
    return lines
