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
    "lora", "ops",
]
