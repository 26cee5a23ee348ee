"""The zoo at paper size and in training. Every spec computes its stats at the size its paper
gives (on the meta device: nothing is allocated), matches the parameter count its paper or
reference implementation publishes (the `# Published:` lines of its header, each naming its
source), and trains two optimizer steps of every train stage at the tiny size, changing the
stage's trainable weights and nothing else.

With MMGRAPH_ZOO_REPORT set, the numbers recorded here (record_property) and the outcome of
every zoo test go into a JSON report that tools/zoo_table.py turns into docs/zoo.md."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import zoo_headers

from mmgraph.backends.torch.inputs import example_inputs
from mmgraph.backends.torch.stats import compute
from mmgraph.build import instantiate, load_class
from mmgraph.train.run import train_settings
from mmgraph.train.trainer import Trainer, owner_of, set_trainable

from conftest import ROOT, SPECS
from tiny import DIMS, TINY

HEADERS = {spec.stem: zoo_headers.read(spec) for spec in SPECS}
PUBLISHED = [(name, p) for name, h in HEADERS.items() for p in h.published]


@functools.cache
def paper_size(name: str) -> tuple[int, int, int]:
    """(total parameters, trainable in the first train stage, forward FLOPs at B=1) of the
    spec as written, on the meta device."""
    cls, g = load_class(ROOT / "specs" / f"{name}.mmg")
    stats = compute(cls, g, {"B": 1})
    trainable = stats.params_trainable
    if g.train and g.train.stages:
        with torch.device("meta"):
            model = cls()
        trainable = set_trainable(model, g, g.train.stages[0].trainable)
    return stats.params_total, trainable, stats.flops


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_paper_size_stats(name, record_property):
    total, trainable, flops = paper_size(name)
    record_property("params", total)
    record_property("trainable", trainable)
    record_property("flops", flops)
    assert total > 0 and 0 <= trainable <= total and flops > 0


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_header_says_how_faithful_the_spec_is(name):
    h = HEADERS[name]
    assert h.paper.count('"') >= 2, f"{name}: the header's first sentence names no paper"
    assert h.fidelity in ("faithful", "partial"), f"{name}: no '# Fidelity:' line"


def test_every_seed_system_has_one_spec():
    """The 78 seed systems of the project each have exactly one spec (its `# Seed:` line)."""
    seeds = sorted(h.seed for h in HEADERS.values() if h.seed is not None)
    assert seeds == list(range(1, 79)), sorted(set(range(1, 79)) - set(seeds))


@pytest.mark.parametrize("name,published", PUBLISHED,
                         ids=[f"{n}-{p.kind}" for n, p in PUBLISHED])
def test_published_parameter_count(name, published, record_property):
    total, trainable, _ = paper_size(name)
    ours = total if published.kind == "total" else trainable
    record_property(f"published_{published.kind}", published.count)
    assert abs(ours - published.count) <= published.tolerance * published.count, (
        f"{name}: {ours:,} {published.kind} parameters, {published.source} gives "
        f"{published.count:,} (±{published.tolerance:.1%})")


def random_batches(g):
    """The data a trainer asks for, as random tiny batches (each epoch two, seeded by their
    place, so a stage sees different examples at each step)."""
    def batches(batch_size, seed, epoch, start):
        for index in range(start, 2):
            yield example_inputs(g, DIMS, int_high=4, seed=1000 * epoch + index)
    return batches


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_trains_two_steps_per_stage(name, tmp_path, record_property):
    cls, g = load_class(ROOT / "specs" / f"{name}.mmg", **TINY[name])
    torch.manual_seed(0)
    model = instantiate(cls, g, pretrained=False)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    pinned = tuple(f"{n}." for n, m in model.named_modules() if getattr(m, "_mm_pinned", False))
    stages = g.train.stages if g.train else []
    trainer = Trainer(model, g, tmp_path / "run", settings=train_settings(g, {"workers": 0}),
                      stages=stages, batches=random_batches(g), n_examples=1 << 20,
                      max_steps=2, quiet=True)
    result = trainer.run()
    assert [s["stage"] for s in result.stages] == [p.name for p in trainer.plans()]
    assert all(s["global_step"] > 0 for s in result.stages)
    for summary in result.stages:
        assert summary["final_losses"] and all(math.isfinite(v) for v in
                                               summary["final_losses"].values()), summary
    record_property("train_losses", result.final_losses)
    trained = {owner for plan in trainer.plans() for owner in plan.trainable}
    teachers = {n for n, inst in g.instances.items() if inst.ema_of}
    moved = [k for k, v in model.state_dict().items()
             if v.is_floating_point() and not torch.equal(v, before[k])]
    assert moved, f"{name}: two steps changed no weight"
    # buffers (BatchNorm statistics, queues, caches) may change in any training pass
    parameters = {n for n, _ in model.named_parameters()}
    for key in moved:
        owner = owner_of(key, list(g.instances))
        assert owner in trained | teachers or key not in parameters, (
            f"{name}: {key} changed but no stage trains {owner}")
        assert not key.startswith(pinned), f"{name}: {key} changed but its component froze it"
