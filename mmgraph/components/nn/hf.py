"""The torch face of `hf_model`: a local transformers model folder, loaded offline from
safetensors only (never remote code), returning one of its outputs."""

from __future__ import annotations

from torch import nn


class HFModel(nn.Module):
    def __init__(self, *, folder: str, output: str):
        super().__init__()
        from transformers import AutoModel  # only when such a layer is built

        self.model = AutoModel.from_pretrained(folder, local_files_only=True,
                                               use_safetensors=True, trust_remote_code=False)
        self.output = output
        self.input_name = self.model.main_input_name  # input_ids or pixel_values

    def forward(self, x):
        out = self.model(**{self.input_name: x}, return_dict=True)
        return getattr(out, self.output)
