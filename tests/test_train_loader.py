"""Data read by a DataLoader with worker processes: the same batches, bit for bit, as reading
in-process, a run stopped and resumed with workers ends with the same weights as one never
stopped, reading data draws no training random numbers, and a worker's DataError arrives as
the DataError it was (no worker traceback in the message)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mmgraph.compiler import check_text
from mmgraph.train.batching import Loader, auto_workers, batches
from mmgraph.train.run import train
from mmgraph.train.sources import DataError, open_source
from mmgraph.train.spec_dataset import SpecDataset
from mmgraph.train.tokenize import ByteTokenizer

SPEC = """
model pictures {
  input image: Image[B, 3, 16, 16]
  input text:  Tokens[B, 24]
  encoder vision: vit(patch=8, width=16, depth=1, heads=2, pool="cls")
  encoder texter: text_transformer(vocab=259, width=16, depth=1, heads=2, max_len=24,
                                   causal=true, pool="eot")
  img = l2norm(vision(image))
  txt = l2norm(texter(text))
  output img, txt
  loss itc = contrastive(img, txt, temperature=0.1)
  train { lr = 1e-3; batch_size = 4; steps = 9; schedule = "constant"; seed = 3; keep = 20 }
}
"""
N = 24  # examples: 6 batches an epoch, so 9 steps cross an epoch boundary


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A .jsonl of PNG files: the kind of data worker processes are for."""
    root = tmp_path_factory.mktemp("pictures")
    rows = []
    for i in range(N):
        colour = (i * 10 % 256, 255 - i * 7 % 256, i * 31 % 256)
        Image.new("RGB", (20 + i % 5, 18), colour).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "text": f"picture number {i}"})
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "m.mmg").write_text(SPEC)
    return root


def dataset(root):
    g = check_text(SPEC).graphs["pictures"]
    return SpecDataset(open_source(str(root / "d.jsonl")), g, ByteTokenizer())


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_give_the_in_process_batches_bit_for_bit(data, workers):
    ds = dataset(data)
    loader = Loader(ds, workers=workers, seed=3)
    try:
        for epoch, start in [(0, 0), (1, 0), (1, 4), (0, 2), (2, 6)]:
            got = list(loader.epoch(4, 3, epoch, start))
            want = list(batches(ds, 4, 3, epoch, start))
            assert len(got) == len(want) == max(0, 6 - start)
            for a, b in zip(got, want, strict=True):
                assert a.keys() == b.keys()
                assert all(torch.equal(a[k], b[k]) for k in a)
    finally:
        loader.close()


def test_reading_data_draws_no_training_random_numbers(data):
    ds = dataset(data)
    before = torch.get_rng_state()
    loader = Loader(ds, workers=2, seed=0)
    list(loader.epoch(4, 0, 0, 3))
    loader.close()
    assert torch.equal(before, torch.get_rng_state())


def model_weights(run):
    step = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run / "checkpoints" / step / "model.safetensors"))


def test_a_run_stopped_and_resumed_with_workers_ends_bit_exact(data, tmp_path):
    common = dict(data=str(data / "d.jsonl"), quiet=True)
    straight = train(data / "m.mmg", out=tmp_path / "straight", workers=2, **common)
    no_workers = train(data / "m.mmg", out=tmp_path / "serial", workers=0, **common)
    assert straight["workers"] == 2 and no_workers["workers"] == 0
    for stop in (4, 6):  # mid-epoch, and exactly at the end of epoch 0
        out = tmp_path / f"stopped{stop}"
        train(data / "m.mmg", out=out, workers=2, max_steps=stop, **common)
        assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == stop
        train(data / "m.mmg", out=out, workers=2, resume=True, **common)
        resumed = model_weights(out)
        want = model_weights(tmp_path / "straight")
        assert resumed.keys() == want.keys()
        assert all(torch.equal(resumed[k], want[k]) for k in want), stop
    serial = model_weights(tmp_path / "serial")
    want = model_weights(tmp_path / "straight")
    assert all(torch.equal(serial[k], want[k]) for k in want)  # workers change no bit


def test_workers_setting_is_validated_and_automatic_by_default(data, tmp_path):
    from mmgraph.errors import UsageError
    with pytest.raises(UsageError, match="--train workers=-1"):
        train(data / "m.mmg", out=tmp_path / "r", data=str(data / "d.jsonl"), quiet=True,
              workers=-1)
    assert auto_workers(open_source("digits")) == 0  # in memory: no processes to start
    files = auto_workers(open_source(str(data / "d.jsonl")))
    assert files == min(4, max(0, (os.cpu_count() or 1) - 1))


def test_a_file_broken_after_the_check_fails_in_a_worker_as_a_data_error(data, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(data, root)
    ds = dataset(root)
    (root / "5.png").write_bytes(b"not a picture any more")
    loader = Loader(ds, workers=2, seed=0)
    try:
        with pytest.raises(DataError) as info:
            list(loader.epoch(4, 0, 0, 0))
    finally:
        loader.close()
    message = str(info.value)
    assert "5.png" in message and "cannot be decoded" in message
    assert "Traceback" not in message and "worker" not in message
