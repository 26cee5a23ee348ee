"""The `mmgraph` command line. Exit codes: 0 ok, 1 a mistake in a spec, its data or a file it
reads or writes, 2 a usage error, 3 a bug in mmgraph (and only that).

Each subcommand is a thin layer over a public function (`mmgraph.compiler.check_file`,
`mmgraph.backends.picture.render`, ...), so the tests and the CLI run the same code.
The language commands (`check`, `graph`, `components`) import no torch, so an editor can
run `mmgraph check` on every keystroke.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from mmgraph.compiler import CheckResult, check_file, parse_override
from mmgraph.errors import UsageError, UserError, describe_os_error
from mmgraph.lang.diagnostics import SpecError, render

EXIT_OK, EXIT_SPEC, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
MAX_DIM = 2**31 - 1  # a size past int32 is a typo, not a batch


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits with 2 as well; keep its message short
        self.print_usage(sys.stderr)
        print(f"mmgraph: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="override a constant of the spec (repeatable)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="import a Python file that registers extra components (repeatable)")
    p.add_argument("--model", help="which model of the file (when it defines several)")
    p.add_argument("--lib", dest="lib_dirs", action="append", default=[], metavar="DIR",
                   help="a folder outside the spec's own that imports may read (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmgraph", description="Declarative model graphs for multimodal "
                                                  "networks: check, draw, compile, train, export.")
    parser.add_argument("--version", action="version", version=f"mmgraph {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("check", help="type- and shape-check specs")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--json", action="store_true", help="machine-readable diagnostics")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="print the checked IR with the type of every value")
    p.add_argument("--no-warnings", action="store_true", help="hide warnings")
    _common(p)

    p = sub.add_parser("graph", help="draw the checked graph (.svg .png .dot .mmd)")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    p.add_argument("--expand", action="store_true", help="draw every layer inside blocks")
    _common(p)

    p = sub.add_parser("compile", help="write the generated PyTorch module and the IR")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("-o", "--output", default="build", metavar="DIR",
                   help="directory for <model>.py and <model>.ir.txt (default: build)")
    _common(p)

    p = sub.add_parser("stats", help="parameters, FLOPs and memory, without allocating weights")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--dims", default="", metavar="B=1,T=32",
                   help="sizes of the free dims (default: the export block's opt sizes, "
                        "B=1, others 32)")
    p.add_argument("--json", action="store_true")
    _common(p)

    p = sub.add_parser("train", help="train a spec, stage by stage, with exact resume")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--data", default="digits", metavar="NAME|PATH",
                   help="digits (built in, the default), a .jsonl file or an image folder")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<model>)")
    p.add_argument("--stage", help="run only this stage")
    p.add_argument("--max-steps", type=int, metavar="N", help="at most N steps per stage")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--init", metavar="DIR",
                   help="start a fresh run (new optimizer, step 0) from the weights of an "
                        "mmgraph run folder or checkpoint, matched by tensor name and shape; "
                        "for a Hugging Face folder declare pretrained(PATH, part=...) in the "
                        "spec instead")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a used run folder: delete its checkpoints, metrics, plots")
    p.add_argument("--train", dest="train_overrides", action="append", default=[],
                   metavar="SETTING=VALUE",
                   help="override a train setting, e.g. --train lr=1e-3 (repeatable)")
    p.add_argument("--tokenizer", metavar="byte|DIR",
                   help="byte (built in) or a local Hugging Face tokenizer folder; default: the "
                        "tokenizer saved with the spec's pretrained text part, else byte")
    p.add_argument("--dims", default="", metavar="T=32", help="sizes of free dims in inputs")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out bad examples (named, and counted) instead of stopping")
    p.add_argument("--allow-outside-data", action="store_true",
                   help="let data files lie outside the data folder (absolute paths, ..)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when present, else cpu), cpu, cuda, cuda:N, mps; under "
                        "torchrun each process uses cuda:LOCAL_RANK")
    p.add_argument("--fsdp", action="store_true",
                   help="shard weights, gradients and optimizer state over the processes "
                        "(FSDP2) instead of replicating them (DDP); checkpoints are sharded")
    p.add_argument("--val", metavar="FRACTION|PATH",
                   help="validation data: a fraction of --data held out (e.g. 0.1) or a .jsonl "
                        "file / image folder; its losses go to metrics.jsonl every eval_every "
                        "steps and at each stage's end")
    p.add_argument("--workers", type=int, metavar="N",
                   help="DataLoader worker processes (the workers train setting; default: 0 "
                        "for in-memory data, up to 4 when files are decoded)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log metrics to RUN/tensorboard (needs mmgraph[tensorboard])")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--json", action="store_true")
    _common(p)

    p = sub.add_parser("eval", help="evaluate a trained spec (zero-shot, accuracy, perplexity)")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="a run directory or one checkpoint folder (without it: the weights of "
                   "the spec's pretrained(...) parts)")
    p.add_argument("--data", default="digits", metavar="NAME|PATH")
    p.add_argument("--split", default="test",
                   help="the split to evaluate (D.test.jsonl, DIR/test); data without one is "
                        "read whole unless the checkpoint was trained on it; train: the "
                        "training data, only when asked")
    p.add_argument("--tokenizer", metavar="byte|DIR")
    p.add_argument("--allow-outside-data", action="store_true",
                   help="let data files lie outside the data folder (absolute paths, ..)")
    p.add_argument("--dims", default="", metavar="T=32")
    p.add_argument("--json", action="store_true")
    _common(p)

    p = sub.add_parser("export", help="ONNX per part, parity, TensorRT/Triton deployment")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--target", default="onnx", metavar="NAME|FILE.toml",
                   help="a target in exporters/ (onnx, onnxruntime-gpu, tensorrt-fp16, "
                        "tensorrt-fp32, jetson-orin, triton), a .toml file, or hf: one "
                        "layer as a Hugging Face folder")
    p.add_argument("--checkpoint", metavar="DIR", help="weights from a training run")
    p.add_argument("-o", "--output", default="dist", metavar="DIR")
    p.add_argument("--part", metavar="LAYER",
                   help="--target hf: the layer written as a Hugging Face folder (default: "
                        "the spec's one pretrained layer)")
    p.add_argument("--json", action="store_true")
    _common(p)

    p = sub.add_parser("bench", help="latency of torch, torch.compile, onnxruntime, TensorRT")
    p.add_argument("source", metavar="SPEC|DIST")
    p.add_argument("--dims", default="", metavar="B=1,T=32")
    p.add_argument("--runs", type=_at_least_one, default=50, help="timed calls per backend")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--json", action="store_true")
    _common(p)

    p = sub.add_parser("convert-checkpoint",
                       help="gather a sharded (--fsdp) checkpoint into one model.safetensors")
    p.add_argument("checkpoint", metavar="DIR", help="a run folder or one of its checkpoints")

    p = sub.add_parser("generate", help="generate text from a spec's model or an export folder")
    p.add_argument("target", metavar="SPEC|DIR",
                   help="a spec (with --checkpoint RUN) or a folder `mmgraph export` wrote")
    p.add_argument("--checkpoint", metavar="RUN", help="a run folder or checkpoint (spec only)")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="a prompt (repeatable: one row each; default one empty prompt)")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="the picture (one for every prompt, or one per prompt)")
    p.add_argument("--audio", action="append", default=[], metavar="PATH.npy",
                   help="the audio input, a numpy array (one, or one per prompt)")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 (the default) is greedy; above 0 samples")
    p.add_argument("--top-k", type=int, metavar="K")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="a token that ends the text (repeatable; the tokenizer's end of text "
                        "always does)")
    p.add_argument("--stop-id", action="append", default=[], type=int, metavar="ID")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", metavar="byte|DIR",
                   help="the tokenizer the model trained with (default: byte, or the "
                        "pretrained part's)")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt in the tokenizer's (or the spec's) chat template")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute every position at each step (spec only; for comparison)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the token ids and the text")
    _common(p)

    p = sub.add_parser("components", help="list the registered components")
    p.add_argument("name", nargs="?", help="show one component's parameters")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py")
    return parser


def _at_least_one(text: str) -> int:
    """argparse type: an int of 1 or more (a bench of zero runs has no median)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mmgraph")
    except metadata.PackageNotFoundError:
        return "dev"


def _overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        try:
            name, value = parse_override(item)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        out[name] = value
    return out


def _plugins(paths: list[str]) -> None:
    from mmgraph.components.registry import load_plugin

    for path in paths:
        try:
            load_plugin(path)
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
        except Exception as exc:  # the plugin's own code failed: say where, not how deep
            raise UsageError(f"plugin {path} failed to load: {type(exc).__name__}: {exc}") \
                from None


# ---------------------------------------------------------------- check

def _summary(result: CheckResult) -> str:
    from mmgraph.components import registry

    parts = []
    for name, g in result.graphs.items():
        layers = sum(1 for i in g.instances.values() if registry.get(i.component).has_weights)
        parts.append(f"model {name}: {len(g.nodes)} values, {layers} layers with weights, "
                     f"{len(g.losses)} losses")
    return "; ".join(parts) or "a library: blocks and constants, no model"


def cmd_check(args) -> int:
    overrides = _overrides(args.overrides)
    _plugins(args.plugin)
    results = [check_file(spec, overrides, args.model, args.lib_dirs) for spec in args.specs]
    if args.json:
        payload = {
            "ok": all(r.ok for r in results),
            "files": [{
                "file": r.path, "ok": r.ok,
                "models": {name: {
                    "values": {n: {p: t.to_json() for p, t in node.types.items()}
                               for n, node in g.nodes.items()},
                    "outputs": {n: str(ref) for n, ref in g.outputs.items()},
                } for name, g in r.graphs.items()},
            } for r in results],
            "diagnostics": [d.to_json() for r in results for d in r.diagnostics
                            if not (args.no_warnings and d.severity == "warning")],
        }
        print(json.dumps(payload, indent=2))
        return EXIT_OK if payload["ok"] else EXIT_SPEC
    for r in results:
        shown = [d for d in r.diagnostics if not (args.no_warnings and d.severity == "warning")]
        for d in shown:
            print(render(d), file=sys.stderr)
            print(file=sys.stderr)
        if r.ok:
            print(f"{r.path}: ok ({_summary(r)})")
            if args.verbose:
                for g in r.graphs.values():
                    print(g.dump(), end="")
        else:
            n = len(r.errors)
            print(f"{r.path}: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
    return EXIT_OK if all(r.ok for r in results) else EXIT_SPEC


# ---------------------------------------------------------------- graph

def cmd_graph(args) -> int:
    from mmgraph.backends.picture import GraphvizMissing
    from mmgraph.backends.picture import render as draw

    overrides = _overrides(args.overrides)
    _plugins(args.plugin)
    result = check_file(args.spec, overrides, args.model, args.lib_dirs)
    if not result.ok:
        for d in result.errors:
            print(render(d), file=sys.stderr)
            print(file=sys.stderr)
        return EXIT_SPEC
    if len(result.graphs) != 1:
        raise UsageError(f"{args.spec} defines {len(result.graphs)} models; pick one with --model")
    g = next(iter(result.graphs.values()))
    try:
        path = draw(g, args.output, expand=args.expand)
    except GraphvizMissing as exc:
        print(f"mmgraph: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {path}")
    return EXIT_OK


# ---------------------------------------------------------------- compile / stats

def cmd_compile(args) -> int:
    from mmgraph.build import write

    _plugins(args.plugin)
    py, ir = write(args.spec, args.output, _overrides(args.overrides), args.model,
                   args.lib_dirs)
    print(f"wrote {py} and {ir}")
    return EXIT_OK


def _dims(text: str) -> dict[str, int]:
    dims = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = item.partition("=")
        if not name.strip().isidentifier() or not value.strip().isdigit():
            raise UsageError(f"--dims expects NAME=INT[,NAME=INT...], got {item!r}")
        if len(value.strip()) > 10 or not 1 <= int(value) <= MAX_DIM:
            raise UsageError(f"--dims {name.strip()}: {value.strip()} is out of range; "
                             f"sizes are 1 to {MAX_DIM:,}")
        dims[name.strip()] = int(value)
    return dims


def cmd_stats(args) -> int:
    from mmgraph.backends.torch.stats import compute, table
    from mmgraph.build import load_class

    _plugins(args.plugin)
    overrides, dims = _overrides(args.overrides), _dims(args.dims)
    cls, g = load_class(args.spec, args.model, lib_dirs=args.lib_dirs, **overrides)
    stats = compute(cls, g, dims)
    print(json.dumps(stats.to_json(), indent=2) if args.json else table(stats))
    return EXIT_OK


# ---------------------------------------------------------------- train / eval

def _train_overrides(items: list[str]) -> dict:
    from mmgraph.compiler import parse_value

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise UsageError(f"--train expects SETTING=VALUE, got {item!r}")
        raw = value.strip()
        out[name.strip()] = [parse_value(v.strip()) for v in raw.strip("[]").split(",")] \
            if raw.startswith("[") else parse_value(raw)
    return out


def cmd_train(args) -> int:
    from mmgraph.train.run import train, write_json

    _plugins(args.plugin)
    result = train(args.spec, data=args.data, out=args.out,
                   overrides=_overrides(args.overrides),
                   settings_overrides=_train_overrides(args.train_overrides),
                   stage=args.stage, max_steps=args.max_steps, resume=args.resume,
                   overwrite=args.overwrite, tokenizer=args.tokenizer, skip_bad=args.skip_bad,
                   allow_outside_data=args.allow_outside_data, dims=_dims(args.dims),
                   quiet=args.quiet or args.json, model_name=args.model, device=args.device,
                   lib_dirs=args.lib_dirs, init=args.init, fsdp=args.fsdp, val=args.val,
                   workers=args.workers, tensorboard=args.tensorboard)
    if result["rank"] != 0:  # under torchrun, the first process reports for all
        return EXIT_OK
    done = result["already_finished"]
    if args.json:
        print(write_json(result))
    elif done is not None:
        print(f"{result['out']} already finished (global step {done['global_step']}): nothing "
              "to resume; to train longer raise --max-steps or the spec's steps/epochs, to "
              "start over use --overwrite")
    else:
        for st in result["stages"]:
            losses = ", ".join(f"{k} {v:.4f}" for k, v in st["final_losses"].items())
            print(f"stage {st['stage']}: {st['steps']} steps, "
                  f"{st['trainable_params']:,} trainable parameters; last losses: {losses}")
        if result["init"]:
            print(f"started from the weights of {result['init']}")
        held = (f" (validation: {result['validation_examples']})"
                if result["validation_examples"] else "")
        print(f"trained {result['model']} on {result['examples']} examples{held} in "
              f"{result['seconds']:.1f} s; run in {result['out']}")
    return EXIT_OK


def cmd_eval(args) -> int:
    from mmgraph.train.evaluate import headline
    from mmgraph.train.run import evaluate_spec, write_json

    _plugins(args.plugin)
    results = evaluate_spec(args.spec, args.checkpoint, data=args.data, split=args.split,
                            tokenizer=args.tokenizer, dims=_dims(args.dims),
                            allow_outside_data=args.allow_outside_data,
                            overrides=_overrides(args.overrides), model_name=args.model,
                            lib_dirs=args.lib_dirs)
    if args.json:
        print(write_json(results))
    else:
        print(f"{results['model']} from {results['checkpoint'] or 'its pretrained parts'} on "
              f"{results['evaluated_on']} ({results['examples']} examples)")
        for line in headline(results):
            print("  " + line)
    return EXIT_OK


# ---------------------------------------------------------------- export / bench

def cmd_export(args) -> int:
    from mmgraph.export import targets
    from mmgraph.export.onnx_parts import export
    from mmgraph.train.run import write_json

    _plugins(args.plugin)
    if args.target == "hf":
        return _export_hf(args)
    target = targets.load(args.target)
    manifest = export(args.spec, args.output, target, overrides=_overrides(args.overrides),
                      checkpoint=args.checkpoint, model_name=args.model, lib_dirs=args.lib_dirs,
                      log=(lambda _: None) if args.json else
                      (lambda line: print(line, file=sys.stderr)))
    if args.json:
        print(write_json(manifest))
    else:
        print(f"exported {manifest['model']} ({len(manifest['parts'])} parts, target "
              f"{target.name}) to {args.output} in {manifest['seconds']:.1f} s")
    return EXIT_OK


def _export_hf(args) -> int:
    """--target hf: one trained layer as a Hugging Face folder (from_pretrained loads it)."""
    from mmgraph.backends.torch.hf_export import write_hf
    from mmgraph.train.run import load_trained, write_json

    model, g, _ = load_trained(args.spec, args.checkpoint, _overrides(args.overrides),
                               model_name=args.model, lib_dirs=args.lib_dirs)
    done = write_hf(model, g, args.part, args.output)
    if args.json:
        print(write_json(done))
    else:
        print(f"wrote {done['layer']} ({done['family']}, model_type {done['model_type']}, "
              f"{done['written']} tensors) as a Hugging Face folder to {done['folder']}")
    return EXIT_OK


def cmd_bench(args) -> int:
    from mmgraph.export.bench import bench, table
    from mmgraph.train.run import write_json

    _plugins(args.plugin)
    report = bench(args.source, _dims(args.dims), args.runs,
                   compile=not args.no_compile, overrides=_overrides(args.overrides),
                   model_name=args.model, lib_dirs=args.lib_dirs,
                   log=lambda line: print(line, file=sys.stderr))
    print(write_json(report) if args.json else table(report))
    return EXIT_OK


# ---------------------------------------------------------------- components

def cmd_components(args) -> int:
    from mmgraph.components import registry
    from mmgraph.ir.schema import describe_field, show

    _plugins(args.plugin)
    if args.name:
        comp = registry.get(args.name)
        if comp is None:
            from mmgraph.suggest import did_you_mean

            hint = did_you_mean(args.name, registry.names())
            raise UsageError(f"no component '{args.name}'" + (f"; {hint}" if hint else ""))
        print(f"{comp.name} ({comp.category}): {comp.summary}")
        ports = [p.name + ("?" if p.optional else "") + ("..." if p.variadic else "")
                 for p in comp.inputs]
        print(f"  inputs: {', '.join(ports)}")
        for fname, f in comp.Params.model_fields.items():
            default = "required" if f.is_required() else f"default {show(f.default)}"
            print(f"  {fname}: {describe_field(f)} ({default})")
        return EXIT_OK
    by_cat: dict[str, list] = {}
    for name in registry.names():
        comp = registry.get(name)
        by_cat.setdefault(comp.category, []).append(comp)
    for cat in ("encoder", "connector", "fusion", "decoder", "head", "layer", "op", "loss"):
        comps = by_cat.pop(cat, [])
        if comps:
            print(f"{cat}:")
            for comp in comps:
                print(f"  {comp.name:24} {comp.summary}")
    for cat, comps in by_cat.items():
        print(f"{cat}:")
        for comp in comps:
            print(f"  {comp.name:24} {comp.summary}")
    return EXIT_OK


def cmd_convert_checkpoint(args) -> int:
    from mmgraph.train.checkpoint import consolidate

    path = consolidate(args.checkpoint)
    print(f"wrote {path / 'model.safetensors'}")
    return EXIT_OK


def cmd_generate(args) -> int:
    from pathlib import Path

    from mmgraph import generation

    _plugins(args.plugin)
    sampling = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                "top_k": args.top_k, "top_p": args.top_p,
                "repetition_penalty": args.repetition_penalty, "seed": args.seed,
                "stop": tuple(args.stop_id)}
    req = generation.Request(prompts=args.prompt or [""],
                             files={"image": args.image, "audio": args.audio},
                             sampling=sampling, stop_texts=args.stop,
                             tokenizer=args.tokenizer, chat=args.chat)
    stream = not args.json and len(req.prompts) == 1

    def on_text(row: int, text: str) -> None:
        print(text, end="", flush=True)

    target = Path(args.target)
    if target.is_dir():
        if args.checkpoint or args.overrides or args.no_cache:
            raise UsageError("--checkpoint, --set and --no-cache go with a spec, not with an "
                             "export folder (it holds its weights and sizes)")
        results = generation.from_export(args.target, req, on_text=on_text if stream else None)
    else:
        results = generation.from_spec(
            args.target, req, checkpoint=args.checkpoint, overrides=_overrides(args.overrides),
            model_name=args.model, lib_dirs=args.lib_dirs, device=args.device,
            cache=not args.no_cache, on_text=on_text if stream else None)
    if args.json:
        print(json.dumps({"generated": [{"prompt": r.prompt, "ids": r.ids, "text": r.text}
                                        for r in results]}))
    elif stream:
        print()
    else:
        for r in results:
            print(f"{r.prompt!r} -> {r.text}")
    return EXIT_OK


COMMANDS = {"check": cmd_check, "graph": cmd_graph, "compile": cmd_compile, "stats": cmd_stats,
            "train": cmd_train, "eval": cmd_eval, "export": cmd_export, "bench": cmd_bench,
            "components": cmd_components, "convert-checkpoint": cmd_convert_checkpoint,
            "generate": cmd_generate}


def _say(message: str) -> None:
    print(f"mmgraph: error: {message}", file=sys.stderr)


def _decode_errors() -> tuple[type[Exception], ...]:
    """Decode errors of file formats read on a user's behalf, when their modules are loaded."""
    found: list[type[Exception]] = [UnicodeDecodeError, json.JSONDecodeError]
    st = sys.modules.get("safetensors")
    if st is not None and hasattr(st, "SafetensorError"):
        found.append(st.SafetensorError)
    pyd = sys.modules.get("pydantic")
    if pyd is not None:
        found.append(pyd.ValidationError)
    return tuple(found)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A user's mistake exits 1 (2 for usage) with a message for people;
    only a bug in mmgraph exits 3."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SpecError as exc:
        for d in exc.diagnostics:
            print(render(d), file=sys.stderr)
            print(file=sys.stderr)
        return EXIT_SPEC
    except UserError as exc:
        _say(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print("mmgraph: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mmgraph components | head`
        sys.stderr.close()
        return EXIT_OK
    except OSError as exc:  # missing file, permission, disk full: the user's to fix
        _say(describe_os_error(exc))
        return EXIT_SPEC
    except MemoryError:
        _say("out of memory: the model or the batch is too large for this machine; "
             "use smaller sizes (--set, --train batch_size=...)")
        return EXIT_SPEC
    except Exception as exc:
        if isinstance(exc, _decode_errors()):
            _say(f"a file could not be decoded: {exc}")
            return EXIT_SPEC
        import os
        import traceback

        if os.environ.get("MMGRAPH_DEBUG"):
            traceback.print_exc()
        print(f"mmgraph: internal error: {type(exc).__name__}: {exc}\n"
              "this is a bug in mmgraph; set MMGRAPH_DEBUG=1 for the traceback and report it",
              file=sys.stderr)
        return EXIT_INTERNAL


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
