"""The torch faces of the components, one module per component module
(mmgraph/components/<role>.py has its faces in mmgraph/components/nn/<role>.py), and what
generated code needs besides: its base classes and the modifiers.

Generated code imports this package as `mm` and nothing else besides torch. It names a
face by its path (`mm.connectors.MLP`), as the component's `torch` attribute gives it, and
a plugin's through `mm.face("name")`.
"""

from mmgraph.components import registry
from mmgraph.components.nn import (  # noqa: F401  (the faces, as `mm.<module>.<face>`)
    alignment,
    backbones,
    cache,
    connectors,
    ctc,
    decoders,
    encoders,
    frames,
    fusion,
    gates,
    heads,
    hf,
    hf_backbones,
    layers,
    losses,
    masked_regions,
    ops,
    prototypes,
    queues,
    recurrent,
    sets,
    similarity,
    video,
    vision_grids,
)
from mmgraph.components.nn.generated import DeclaredInput, GeneratedModel, GeneratedPart
from mmgraph.components.nn.modifiers import freeze, lora


def face(name: str):
    """The torch face (module class or function) of the registered component `name`."""
    return registry.get(name).torch_face()


__all__ = ["DeclaredInput", "GeneratedModel", "GeneratedPart", "face", "freeze", "lora"]
