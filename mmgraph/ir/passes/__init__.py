"""The checker's passes, in the order they run. Each is one module with a `run` function;
after each, the graph lints clean and its `ensures` hold (see `base.run_passes`)."""

from mmgraph.ir.passes import (
    constants,
    decoding,
    expand,
    infer,
    parts,
    resolve,
    trainability,
    verify,
)
from mmgraph.ir.passes.base import (
                                    Compilation,
                                    NamedPass,
                                    PassFailed,
                                    every_node_typed,
                                    in_dependency_order,
                                    run_passes,
)

PASSES: list[NamedPass] = [
    NamedPass("resolve", resolve.run, "names, duplicates, cycles between values"),
    NamedPass("constants", constants.run, "evaluate constants, apply --set overrides"),
    NamedPass("expand", expand.run, "lower to IR, expand blocks and repeats, check parameters",
              recoverable=True),
    NamedPass("infer", infer.run, "types and shapes of every value, nodes in dependency order",
              ensures=(every_node_typed, in_dependency_order)),
    NamedPass("verify", verify.run, "whole-graph invariants, component hooks, unused values"),
    NamedPass("trainability", trainability.run, "train settings and stage trainable lists"),
    NamedPass("parts", parts.run, "export dim ranges, parts as closed subgraphs, settings"),
    NamedPass("decoding", decoding.run, "whether and how the model generates one token at a time"),
]

__all__ = ["PASSES", "Compilation", "NamedPass", "PassFailed", "run_passes"]
