"""`ema_of(x, decay=d)` momentum teachers and `feature_queue(x, size=N)`: what the trainer does
with them after each step, and that a resumed run continues both exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mmgraph.backends.torch.weights import find
from mmgraph.components.nn.queues import FeatureQueue
from mmgraph.train.run import train

from helpers import errors, graph

DECAY = 0.9
MOMENTUM = """
model mom {
  input image: Image[B, 3, 16, 16]
  input text:  Tokens[B, 40]
  encoder vision: vit(patch=4, width=16, depth=1, heads=2, pool="cls")
  encoder vision_m: vit(patch=4, width=16, depth=1, heads=2, pool="cls") ema_of(vision, decay=0.9)
  encoder texter: text_transformer(vocab=259, width=16, depth=1, heads=2, max_len=40,
                                   causal=true, pool="eot") frozen
  connector img_proj: linear(out=8)
  connector txt_proj: linear(out=8)
  img = l2norm(img_proj(vision(image)))
  img_m = l2norm(img_proj(vision_m(image)))
  txt = l2norm(txt_proj(texter(text)))
  past = feature_queue(img_m, size=40)
  output img, txt
  loss itc = contrastive(img, txt)
  loss distill = feature_distill(img, img_m)
  loss queued = kl_distill(similarity(img, past), similarity(img_m, past))
  train {
    batch_size = 16
    steps = 4
    schedule = "constant"
    ckpt_every = 1
    keep = 10
  }
}
"""


def step_weights(run, step):
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ema")
    spec = tmp / "mom.mmg"
    spec.write_text(MOMENTUM)
    from mmgraph.build import load_class

    cls, _ = load_class(spec)
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in cls().state_dict().items()}
    train(spec, out=tmp / "run", quiet=True)
    return spec, tmp, initial


def test_the_teacher_after_each_step_is_the_hand_computed_ema_of_its_source(trained):
    _, tmp, initial = trained
    teacher = {k[len("vision."):]: v for k, v in initial.items() if k.startswith("vision.")}
    assert teacher, "no vision weights"
    for step in range(1, 5):
        w = step_weights(tmp / "run", step)
        for key in teacher:
            teacher[key] = DECAY * teacher[key] + (1 - DECAY) * w["vision." + key]
            if teacher[key].is_floating_point():
                torch.testing.assert_close(w["vision_m." + key], teacher[key], rtol=0,
                                           atol=1e-6, msg=f"step {step}: {key}")
    last = step_weights(tmp / "run", 4)
    assert any(not torch.equal(last["vision_m." + k], initial["vision_m." + k]) for k in teacher)


def test_the_queue_holds_the_last_rows_of_the_global_batch_in_the_checkpoint(trained):
    _, tmp, _ = trained
    w = step_weights(tmp / "run", 4)
    assert int(w["feature_queue.ptr"]) == (4 * 16) % 40
    assert w["feature_queue.features"].shape == (40, 8)
    rows = w["feature_queue.features"]
    assert torch.allclose(rows.norm(dim=-1), torch.ones(40), atol=1e-5)  # all filled: l2norm


def test_a_resumed_run_continues_teacher_and_queue_bit_for_bit(trained, tmp_path):
    spec, tmp, _ = trained
    train(spec, out=tmp_path / "r", quiet=True, max_steps=2)
    train(spec, out=tmp_path / "r", quiet=True, resume=True)
    once = load_file(str(find(tmp / "run") / "model.safetensors"))
    resumed = load_file(str(find(tmp_path / "r") / "model.safetensors"))
    assert once.keys() == resumed.keys()
    for key in once:
        assert torch.equal(once[key], resumed[key]), key


def test_feature_queue_returns_what_it_held_oldest_first_then_adds_the_batch():
    q = FeatureQueue(size=5, width=1).train()
    batch = [torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[4.0], [5.0], [6.0]]),
             torch.tensor([[7.0], [8.0], [9.0]])]
    assert q(batch[0]).flatten().tolist() == [0.0] * 5
    assert q(batch[1]).flatten().tolist() == [0.0, 0.0, 1.0, 2.0, 3.0]
    assert q(batch[2]).flatten().tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    q.eval()  # evaluation reads the queue and leaves it as it was
    assert q(batch[0]).flatten().tolist() == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert q(batch[0]).flatten().tolist() == [5.0, 6.0, 7.0, 8.0, 9.0]
    q.train()(torch.arange(7.0).reshape(7, 1))  # more rows than it holds: the last 5 stay
    assert q(batch[0]).flatten().tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_ema_of_is_shown_and_its_mistakes_are_named():
    g = graph(MOMENTUM)
    assert g.instances["vision_m"].ema_of == "vision" and g.instances["vision_m"].frozen
    assert "frozen ema_of(vision, decay=0.9)" in g.dump()
    line = 'ema_of(vision, decay=0.9)'
    assert errors(MOMENTUM.replace(line, "ema_of(visio, decay=0.9)")) == [
        ("E206", 6, 81, "ema_of(visio): no layer 'visio' is declared here")]
    assert errors(MOMENTUM.replace(line, "ema_of(vision, decay=1)")) == [
        ("E203", 6, 95, "ema_of parameter 'decay': must be a number > 0 and < 1 (got 1)")]
    assert errors(MOMENTUM.replace(line, "ema_of(decay=0.9)")) == [
        ("E206", 6, 74, "ema_of takes the layer it averages, then decay=")]
    assert errors(MOMENTUM.replace(line, "ema_of(vision_m)")) == [
        ("E206", 6, 81, "'vision_m' cannot be the moving average of itself")]
    other = MOMENTUM.replace('heads=2, pool="cls") ema_of', 'heads=4, pool="cls") ema_of')
    assert errors(other) == [
        ("E206", 6, 81, "'vision_m' (vit(...)) must be the same component with the same "
                        "parameters as 'vision' (vit(...)) to average its weights")]


def test_feature_queue_takes_embeddings():
    src = MOMENTUM.replace("feature_queue(img_m, size=40)", "feature_queue(image, size=40)")
    assert errors(src) == [("E302", 14, 24, "feature_queue expects Vec[B, D] for 'x' but image "
                                            "gives Image<image>[B, 3, 16, 16]")]


def test_the_docs_example_checks_and_prints_its_teacher():
    from helpers import docs_example

    source, shown = docs_example("model momentum {")
    assert shown.strip() in graph(source).dump(spans=False)


def test_a_stage_cannot_train_a_teacher():
    src = MOMENTUM.replace("    keep = 10\n", "    keep = 10\n    stage s { trainable = [vision, "
                                                "vision_m] }\n")
    assert errors(src) == [("E503", 25, 36, "trainable lists 'vision_m', a moving average of "
                                            "'vision' (ema_of), which the optimizer never steps")]


def _queue_worker(rank: int, size: int, port: int, out: str) -> None:
    import json
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        q = FeatureQueue(size=6, width=1).train()
        for step in range(2):  # rank r's rows of step s: 10 * s + 2 * r + (0, 1)
            rows = torch.tensor([[10.0 * step + 2 * rank], [10.0 * step + 2 * rank + 1]])
            q(rows)
        held = q.eval()(torch.zeros(1, 1)).flatten().tolist()
        json.dump(held, open(f"{out}/{rank}.json", "w"))
    finally:
        dist.destroy_process_group()


def test_two_processes_hold_the_same_queue_of_the_global_batch(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_queue_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):  # the last 6 rows of the global batches, rank order within each
        assert json.load(open(tmp_path / f"{rank}.json")) == [2.0, 3.0, 10.0, 11.0, 12.0,
                                                              13.0]
