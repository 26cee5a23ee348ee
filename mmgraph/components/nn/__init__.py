"""The torch face of the components: one readable nn.Module per component with weights,
and plain functions (`ops`) for the weightless ones. Generated model code imports this
package as `mm` and nothing else besides torch."""

from mmgraph.components.nn import ops
from mmgraph.components.nn.connectors import (
                                              MLP,
                                              Linear,
                                              PerceiverResampler,
                                              Pool,
                                              PromptTokens,
                                              QFormer,
)
from mmgraph.components.nn.decoders import (
                                              BoxHead,
                                              CausalLM,
                                              Classifier,
                                              ITMHead,
                                              LMHead,
                                              MAEDecoder,
                                              ObjectQueries,
                                              Regression,
                                              TransformerDecoder,
)
from mmgraph.components.nn.encoders import (
                                              AudioEncoder,
                                              FeatureEmbed,
                                              MelPatchEmbed,
                                              PatchEmbed,
                                              PointTokenizer,
                                              TextTransformer,
                                              TokenEmbedding,
                                              VideoEncoder,
                                              ViT,
)
from mmgraph.components.nn.fusion import (
                                              FFN,
                                              CoAttention,
                                              CrossAttention,
                                              GatedCrossAttention,
                                              LayerNorm,
                                              ModalityAttention,
                                              ModalityFFN,
                                              MoEFFN,
                                              RMSNorm,
                                              SelfAttention,
                                              TanhGate,
                                              Transformer,
                                              TransformerLayer,
)
from mmgraph.components.nn.generated import ExportPart, GeneratedModel
from mmgraph.components.nn.losses import Contrastive
from mmgraph.components.nn.modifiers import LoRALinear, freeze, lora


def plugin(name: str):
    """The torch face (module class or function) of a component a plugin registered."""
    from mmgraph.components import registry

    comp = registry.get(name)
    face = comp.torch_module if comp.has_weights else comp.torch_function
    if face is None:
        kind = "torch_module" if comp.has_weights else "torch_function"
        raise NotImplementedError(f"component '{name}' has no {kind}: its plugin defines how "
                                  "to check it but not how to run it")
    return face

__all__ = [
    "AudioEncoder", "BoxHead", "CausalLM", "Classifier", "CoAttention", "Contrastive",
    "CrossAttention", "ExportPart", "FFN", "FeatureEmbed", "GeneratedModel",
    "GatedCrossAttention",
    "ITMHead", "LMHead",
    "LayerNorm", "Linear", "MAEDecoder", "MLP", "MelPatchEmbed", "ModalityAttention",
    "ModalityFFN", "MoEFFN", "ObjectQueries", "PatchEmbed", "PerceiverResampler",
    "PointTokenizer", "Pool", "PromptTokens", "QFormer", "RMSNorm", "Regression",
    "SelfAttention", "TanhGate", "TextTransformer", "TokenEmbedding", "Transformer",
    "TransformerDecoder", "TransformerLayer", "VideoEncoder", "ViT", "LoRALinear", "freeze",
    "lora", "ops", "plugin",
]
