"""fp16 exports keep recurrent layers in fp32: onnxruntime crashed (SIGSEGV, no error) building
a session for an fp16 bidirectional GRU, killing `mmgraph export` with it. The export runs in
a child process so that a regression fails this test instead of the test run."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

SPEC = """model r {
  input text: Tokens[B, T]
  layer chars: token_embedding(vocab=40, width=8)
  layer rnn: %s(hidden=16, bidirectional=true)
  connector attend: pool(mode="attention", heads=2)
  y = attend(rnn(chars(text)))
  output y
  export {
    dim B = 1..128 @ 32
    dim T = 1..256 @ 64
    precision = fp16
  }
}
"""  # the shape that crashed: characters embedded, a bidirectional GRU, attention pooling


@pytest.mark.parametrize("layer", ["gru", "lstm"])
def test_an_fp16_export_of_a_recurrent_layer_runs_and_keeps_it_fp32(layer, tmp_path):
    spec = tmp_path / "r.mmg"
    spec.write_text(SPEC % layer)
    done = subprocess.run([sys.executable, "-m", "mmgraph", "export", str(spec), "--target",
                           "tensorrt-fp16", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (part,) = manifest["parts"]
    assert part["parity"]["fp16"]["y"]["max_abs"] < 1e-2
    graph = onnx.load(str(tmp_path / "out" / part["onnx_fp16"])).graph
    op = {"gru": "GRU", "lstm": "LSTM"}[layer]
    rnn = [n for n in graph.node if n.op_type == op]
    assert rnn, f"no {op} node"
    fp32 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert all(w in fp32 for n in rnn for w in n.input[1:3]), "its weights stay fp32"
