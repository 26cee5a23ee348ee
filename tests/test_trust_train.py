"""Training trusts nothing (issue 8): one test per item.

No loop without progress; a run folder belongs to one run (lock, --resume/--overwrite,
rotation, stale temporaries, a finished run); checkpoints carry checksums and finite
weights; write errors name the file and leave the previous checkpoint; data is checked as
it is read, naming file:line.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmgraph.backends.torch import weights
from mmgraph.backends.torch.weights import CheckpointError
from mmgraph.build import load_class
from mmgraph.cli import main
from mmgraph.errors import UserError
from mmgraph.train import checkpoint as ckpt
from mmgraph.train.checkpoint import Position
from mmgraph.train.run import check_device, train
from mmgraph.train.runfolder import RunFolderError, claim
from mmgraph.train.sources import DataError, ListSource, open_source
from mmgraph.train.spec_dataset import SpecDataset
from mmgraph.train.tokenize import ByteTokenizer
from mmgraph.train.trainer import StagePlan, Trainer

from conftest import ROOT

TINY = ROOT / "tests" / "bad_inputs" / "tiny.mmg"
PGM = "P2\n2 2\n255\n0 255\n255 0\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One finished run of the tiny spec: step-00000002 (stage warm), step-00000004 (all)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(TINY, out=run, max_steps=2, quiet=True)
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of the trained run."""
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def cli(*args: str) -> int:
    return main([str(a) for a in args])


# ------------------------------------------------------------------ no loop without progress

def test_a_batch_larger_than_the_data_is_refused_before_the_folder_is_touched(tmp_path):
    with pytest.raises(DataError, match=r"batch_size 5000 is larger than the data set "
                                        r"\(1437 examples\).*lower batch_size"):
        train(TINY, out=tmp_path / "r", settings_overrides={"batch_size": 5000}, quiet=True)
    assert not (tmp_path / "r").exists()


def test_an_epoch_that_yields_no_batch_raises_instead_of_spinning(tmp_path):
    cls, g = load_class(TINY)
    trainer = Trainer(cls(), g, tmp_path, settings={}, stages=[],
                      batches=lambda *args: iter(()), n_examples=10)
    plan = StagePlan("s", [], {"batch_size": 4, "seed": 0}, steps=1, batches_per_epoch=2)
    with pytest.raises(DataError, match="epoch 0 of stage s gave no batch"):
        next(trainer.iterate(plan, Position()))
    # a resumed epoch with nothing left moves on to the next epoch, which must then yield
    with pytest.raises(DataError, match="epoch 4 of stage s gave no batch"):
        next(trainer.iterate(plan, Position(epoch=3, batch=2)))


# ------------------------------------------------------------------ a run folder belongs to one run

def test_a_concurrent_run_fails_at_once_and_the_folder_is_free_after(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom mmgraph.train.runfolder import claim\n"
         f"with claim({str(out)!r}, resume=False, overwrite=False):\n"
         "    print('held', flush=True)\n    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli("train", TINY, "--out", out, "--max-steps", "1", "--quiet") == 1
        assert "is in use by another training run" in capsys.readouterr().err
        assert not (out / "checkpoints").exists()
    finally:
        holder.communicate("")
    assert cli("train", TINY, "--out", out, "--max-steps", "1", "--quiet") == 0


def test_the_lock_is_held_for_the_whole_run_and_released_after(tmp_path):
    out = tmp_path / "run"
    with claim(out, resume=False, overwrite=False):
        with pytest.raises(RunFolderError, match="in use"):
            with claim(out, resume=False, overwrite=False):
                pass
    with claim(out, resume=False, overwrite=False):
        pass


def test_a_second_run_into_a_used_folder_is_refused_and_changes_nothing(run, capsys):
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert cli("train", TINY, "--out", run, "--max-steps", "1", "--quiet") == 1
    err = capsys.readouterr().err
    assert "already holds a run (checkpoints up to step 4)" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_overwrite_clears_the_old_run_first(run):
    (run / "notes.txt").write_text("mine")
    assert cli("train", TINY, "--out", run, "--max-steps", "1", "--overwrite", "--quiet") == 0
    steps = [json.loads(line)["global_step"]
             for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # the new run's lines only, nothing appended to the old ones
    assert [s for s, _ in weights.checkpoints(run / "checkpoints")] == [1, 2]
    assert (run / "notes.txt").read_text() == "mine"


def test_resume_of_a_finished_run_says_so_and_exits_0(run, capsys):
    metrics = (run / "metrics.jsonl").read_bytes()
    assert cli("train", TINY, "--out", run, "--resume", "--max-steps", "2") == 0
    assert "already finished (global step 4)" in capsys.readouterr().out
    assert (run / "metrics.jsonl").read_bytes() == metrics


def test_resume_from_a_stage_end_runs_the_next_stage(run):
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    (run / "checkpoints" / "latest").write_text("step-00000002\n")
    result = train(TINY, out=run, max_steps=2, resume=True, quiet=True)
    assert [s["stage"] for s in result["stages"]] == ["warm", "all"]
    assert weights.latest(run / "checkpoints").name == "step-00000004"


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(RunFolderError, match="nothing to resume"):
        train(TINY, out=tmp_path / "new", max_steps=1, resume=True, quiet=True)


def test_stale_temporaries_are_cleaned_on_start(run):
    stale = run / "checkpoints" / "step-00000007.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    (run / "checkpoints" / "latest.tmp").write_text("step-0")
    with claim(run, resume=True, overwrite=False):
        assert not stale.exists() and not (run / "checkpoints" / "latest.tmp").exists()
    assert weights.latest(run / "checkpoints").name == "step-00000004"


def tiny_state():
    cls, g = load_class(TINY)
    model = cls()
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, g, optimizer, scheduler


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_rotation_never_loses_the_newest_nor_leaves_latest_dangling(tmp_path, keep):
    model, g, optimizer, scheduler = tiny_state()
    root = tmp_path / "checkpoints"
    for step in (10, 11, 12):  # a history this run does not continue
        ckpt.save(root, model, optimizer, scheduler, Position(global_step=step), g, {}, keep=3)
    for step in (2, 3, 4, 5):
        written = ckpt.save(root, model, optimizer, scheduler, Position(global_step=step), g,
                            {}, keep=keep)
        steps = [s for s, _ in weights.checkpoints(root)]
        assert steps == list(range(max(2, step - keep + 1), step + 1))
        assert (root / "latest").read_text().strip() == written.name
        assert weights.latest(root) == written


# ------------------------------------------------------------------ checkpoints carry checksums

def test_flipped_bytes_are_found_by_the_checksum(run):
    step = run / "checkpoints" / "step-00000004"
    model, g, optimizer, scheduler = tiny_state()
    for name in ("model.safetensors", "optimizer.safetensors"):
        data = bytearray((step / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (step / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"step-00000004/model.safetensors is damaged: "
                                              r"its sha256 differs"):
        weights.load_weights(step, model, g)
    with pytest.raises(CheckpointError, match="optimizer.safetensors is damaged"):
        ckpt.load_training_state(step, optimizer, scheduler)


def test_non_finite_weights_are_refused_even_with_a_matching_checksum(run):
    import hashlib

    step = run / "checkpoints" / "step-00000004"
    tensors = load_file(step / "model.safetensors")
    tensors["img_proj.weight"][0, 0] = float("inf")
    save_file(tensors, step / "model.safetensors")
    state = json.loads((step / "state.json").read_text())
    state["files"]["model.safetensors"] = hashlib.sha256(
        (step / "model.safetensors").read_bytes()).hexdigest()
    (step / "state.json").write_text(json.dumps(state))
    model, g, _, _ = tiny_state()
    with pytest.raises(CheckpointError, match="tensor 'img_proj.weight' holds NaN or infinite"):
        weights.load_weights(step, model, g)


def test_checkpoints_without_checksums_still_load(run):
    step = run / "checkpoints" / "step-00000004"
    state = json.loads((step / "state.json").read_text())
    del state["files"]
    (step / "state.json").write_text(json.dumps(state))
    model, g, _, _ = tiny_state()
    weights.load_weights(step, model, g)
    assert torch.equal(model.state_dict()["img_proj.weight"],
                       load_file(step / "model.safetensors")["img_proj.weight"])


@pytest.mark.parametrize("damage,message", [
    ("{", "not valid JSON"), ("[]", "expected a JSON object"),
    ('{"format": 1}', "position: field required"),
])
def test_a_damaged_state_json_is_named(run, damage, message):
    step = run / "checkpoints" / "step-00000004"
    (step / "state.json").write_text(damage)
    model, g, _, _ = tiny_state()
    with pytest.raises(CheckpointError, match=f"step-00000004/state.json is damaged: {message}"):
        weights.load_weights(step, model, g)


# ------------------------------------------------------------------ write errors

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_failed_write_names_the_file_and_keeps_the_previous_checkpoint(run, monkeypatch,
                                                                         code):
    model, g, optimizer, scheduler = tiny_state()
    root = run / "checkpoints"
    real_open = open

    def failing_open(path, mode="r", *args, **kwargs):
        if "w" in mode and Path(path).name == "optimizer.safetensors":
            raise OSError(code, "injected", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(ckpt, "open", failing_open, raising=False)
    with pytest.raises(CheckpointError) as err:
        ckpt.save(root, model, optimizer, scheduler, Position(global_step=5), g, {}, keep=1)
    assert "cannot write checkpoint" in str(err.value)
    assert "step-00000005.tmp/optimizer.safetensors" in str(err.value)
    assert ("disk is full" if code == errno.ENOSPC else "permission denied") in str(err.value)
    assert not (root / "step-00000005.tmp").exists() and not (root / "step-00000005").exists()
    assert weights.latest(root).name == "step-00000004"
    assert (root / "step-00000002").exists()  # nothing rotated away


def test_a_failed_write_during_training_exits_1(tmp_path, monkeypatch, capsys):
    real_open = open

    def full_disk(path, mode="r", *args, **kwargs):
        if "w" in mode and Path(path).name == "model.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(ckpt, "open", full_disk, raising=False)
    assert cli("train", TINY, "--out", tmp_path / "r", "--max-steps", "1", "--quiet") == 1
    err = capsys.readouterr().err
    assert "step-00000001.tmp/model.safetensors: the disk is full" in err
    assert not (tmp_path / "r" / "checkpoints" / "step-00000001.tmp").exists()


# ------------------------------------------------------------------ wrong input refused early

@pytest.mark.parametrize("args,message", [
    (["--stage", "nope"], "--stage nope: tiny has no such stage"),
    (["--max-steps", "-1"], "--max-steps must be at least 1"),
    (["--max-steps", "0"], "--max-steps must be at least 1"),
    (["--device", "nonsense"], "is not a device name"),
    (["--train", "batch_size=-2"], "--train batch_size=-2: Input should be greater than 0"),
    (["--train", "warmpu=3"], "did you mean 'warmup'?"),
])
def test_usage_errors_exit_2_before_any_work(tmp_path, capsys, args, message):
    assert cli("train", TINY, "--out", tmp_path / "r", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_that_is_not_here_is_refused_with_what_is():
    with pytest.raises(UserError, match="no such CUDA device.*available here: cpu"):
        check_device("cuda")


# ------------------------------------------------------------------ data checked as it is read

def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_a_json_line_nested_100k_deep_names_its_line(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    data = write(tmp_path / "d.jsonl", '{"text": "ok"}\n' + deep + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: JSON nested too deeply"):
        open_source(str(data))


def test_invalid_utf8_names_its_line_and_skip_bad_names_what_it_skips(tmp_path, capsys):
    write(tmp_path / "a.pgm", PGM)
    data = write(tmp_path / "d.jsonl", b'{"image": "a.pgm", "text": "ok"}\n'
                                       b'{"image": "a.pgm", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid UTF-8"):
        open_source(str(data))
    assert cli("train", TINY, "--data", data, "--out", tmp_path / "r", "--skip-bad",
               "--train", "batch_size=1", "--max-steps", "1", "--quiet") == 0
    err = capsys.readouterr().err
    assert "skipped 1 bad example:" in err and "d.jsonl:2: not valid UTF-8" in err


CLASSIFIER = """
model cls {
  input image: Image[B, 1, 8, 8]
  input label: Labels[B]
  encoder tokens: patch_embed(patch=4, width=8)
  head head: classifier(classes=3)
  logits = head(pool(tokens(image), mode="mean"))
  output logits
  loss ce = cross_entropy(logits, label)
}
"""


def test_labels_and_token_ids_are_checked_against_the_spec():
    from mmgraph.compiler import check_text

    g = check_text(CLASSIFIER).graphs["cls"]
    image = torch.zeros(8, 8).numpy()
    ok = {"image": image, "label": 2}
    with pytest.raises(DataError, match=r"mini\[1\]: label 3 .* loss 'ce' \(3 classes\) "
                                        r"takes 0\.\.2"):
        SpecDataset(ListSource([ok, {"image": image, "label": 3}], "mini"), g, ByteTokenizer())
    data = SpecDataset(ListSource([ok, {"image": image, "label": -5}, ok], "mini"), g,
                       ByteTokenizer(), skip_bad=True)
    assert len(data) == 2 and data.problems == [
        "mini[1]: label -5 in field 'label' is out of range: loss 'ce' (3 classes) takes 0..2"]
    g = check_text(TINY.read_text()).graphs["tiny"]
    bad_ids = {"image": image, "text": [257, 300, 258]}
    with pytest.raises(DataError, match=r"mini\[0\]: token id 300 .* vocab=259\) takes 0\.\.258"):
        SpecDataset(ListSource([bad_ids], "mini"), g, ByteTokenizer())


def test_files_outside_the_data_folder_are_refused_unless_allowed(tmp_path):
    write(tmp_path / "outside.pgm", PGM)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link.pgm").symlink_to(tmp_path / "outside.pgm")
    for value in (str(tmp_path / "outside.pgm"), "../outside.pgm", "link.pgm"):
        data = write(tmp_path / "data" / "d.jsonl", json.dumps({"image": value, "text": "x"}))
        with pytest.raises(DataError, match=r"d.jsonl:1: image .* is outside the data folder.*"
                                            r"--allow-outside-data"):
            open_source(str(data))
        assert len(open_source(str(data), allow_outside=True)) == 1
