"""`tasks = "alternate"`: step i optimises only the (i mod k)-th of a stage's losses (IMP)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from mmgraph.backends.torch.weights import find
from mmgraph.train.run import train
from mmgraph.train.tasks import schedule_for

from helpers import errors

TWO_TASKS = """
model two_tasks {
  input image: Image[B, 3, 16, 16]
  input text:  Tokens[B, 40]
  encoder vision: vit(patch=4, width=16, depth=1, heads=2, pool="cls")
  encoder texter: text_transformer(vocab=259, width=16, depth=1, heads=2, max_len=40,
                                   causal=true, pool="eot") frozen
  connector a_img: linear(out=8)
  connector a_txt: linear(out=8)
  connector b_img: linear(out=8)
  connector b_txt: linear(out=8)
  v = vision(image)
  t = texter(text)
  output v
  loss a = contrastive(l2norm(a_img(v)), l2norm(a_txt(t)))
  loss b = contrastive(l2norm(b_img(v)), l2norm(b_txt(t))) * 0.5
  train {
    batch_size = 16
    weight_decay = 0.0
    stage both { steps = 4; losses = [b, a]; tasks = "alternate" }
  }
}
"""


def test_alternate_steps_one_loss_per_step_in_the_order_written(tmp_path):
    spec = tmp_path / "two.mmg"
    spec.write_text(TWO_TASKS)
    train(spec, out=tmp_path / "run", quiet=True)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["task"] for r in lines] == ["b", "a", "b", "a"]
    assert all({"loss/a", "loss/b"} <= set(r) for r in lines)  # both still measured


def test_the_first_step_moves_only_what_its_loss_reaches(tmp_path):
    """Step 1 optimises `b`: a's own projections get a zero gradient, so Adam leaves them
    as they were; the shared tower moves."""
    spec = tmp_path / "two.mmg"
    spec.write_text(TWO_TASKS)
    from mmgraph.build import load_class

    cls, _ = load_class(spec)
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in cls().state_dict().items()}
    train(spec, out=tmp_path / "run", quiet=True, max_steps=1)
    after = load_file(str(find(tmp_path / "run") / "model.safetensors"))
    for key, value in after.items():
        if key.startswith(("a_img", "a_txt", "texter", "a.", "a_")):
            assert torch.equal(value, initial[key]), key
        if key.startswith(("b_img", "vision.")) and key.endswith("weight"):
            assert not torch.equal(value, initial[key]), key


def test_the_objective_is_the_stepped_loss_weighted_and_the_rest_at_weight_zero():
    s = schedule_for({"losses": ("b", "a"), "tasks": "alternate"}, {"a": 1.0, "b": 0.5})
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(3.0, requires_grad=True)
    losses = {"a": a, "b": b, "total": a + 0.5 * b}
    out = s.objective(losses, 0)
    out.backward()
    assert float(out.detach()) == 1.5 and float(b.grad) == 0.5 and float(a.grad) == 0.0
    assert [s.task(i) for i in range(5)] == ["b", "a", "b", "a", "b"]
    joint = schedule_for({"losses": ("a",)}, {"a": 1.0, "b": 0.5})
    assert joint.task(3) is None and float(joint.objective(losses, 3).detach()) == 2.0
    everything = schedule_for({}, {"a": 1.0, "b": 0.5})
    assert everything.objective(losses, 0) is losses["total"]


def test_an_unknown_task_schedule_is_named_where_it_is_written():
    src = TWO_TASKS.replace('tasks = "alternate"', 'tasks = "alternating"')
    (err,) = errors(src)
    assert err[:3] == ("E502", 20, 54), err
    assert err[3] == ("stage 'both' setting 'tasks': must be one of \"joint\", "
                      "\"alternate\" (got \"alternating\")")


def test_a_resumed_run_continues_the_rotation(tmp_path):
    spec = tmp_path / "two.mmg"
    spec.write_text(TWO_TASKS.replace("losses = [b, a]", "losses = [a, b, b]"))
    train(spec, out=tmp_path / "run", quiet=True, max_steps=2)
    train(spec, out=tmp_path / "run", quiet=True, resume=True)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["task"]) for r in lines] == [(1, "a"), (2, "b"), (3, "b"), (4, "a")]
