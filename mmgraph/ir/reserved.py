"""Layer names the generated module cannot hold as attributes, known without importing torch.

A layer becomes an attribute of an `nn.Module` subclass named after it, so a layer called
`forward`, `to` or `_modules` would shadow torch's own (`losses` recursed forever), a
Python keyword cannot be an attribute at all, and a name codegen rewrites (`torch` to
`torch_`) would no longer match the layer name the trainer and stats look up. `check`
refuses them all at the declaration. `tests/test_trust_lang.py` keeps this list a superset
of `dir(GeneratedModel())` for the installed torch.
"""

from __future__ import annotations

import keyword

from mmgraph.escape import py_name

# nn.Module's attributes (torch 2.4 to 2.13, and `smart_apply`, which transformers adds to
# nn.Module once it initialises a model's weights: hf_model, hf_backbone) and GeneratedModel's
# own (its generation methods and data among them), `graph` set by load().
MODULE_ATTRIBUTES = frozenset("""
T_destination _apply _backward_hooks _backward_pre_hooks _buffers _call_impl
_compiled_call_impl _forward_hooks _forward_hooks_always_called _forward_hooks_with_kwargs
_forward_pre_hooks _forward_pre_hooks_with_kwargs _get_backward_hooks _get_backward_pre_hooks
_get_name _is_full_backward_hook _load_from_state_dict _load_state_dict_post_hooks
_load_state_dict_pre_hooks _maybe_warn_non_full_backward_hook _modules _named_members
_non_persistent_buffers_set _parameters _register_load_state_dict_pre_hook
_register_state_dict_hook _replicate_for_data_parallel _save_to_state_dict _slow_forward
_state_dict_hooks _state_dict_pre_hooks _version _wrapped_call_impl add_module apply bfloat16
buffers call_super_init check_inputs children compile cpu cuda double dump_patches eval
extra_repr float forward get_buffer get_extra_state get_parameter get_submodule half inputs ipu
load_state_dict loss_weights losses modules mtia named_buffers named_children named_modules
named_parameters outputs parameters register_backward_hook register_buffer
register_forward_hook register_forward_pre_hook register_full_backward_hook
register_full_backward_pre_hook register_load_state_dict_post_hook
register_load_state_dict_pre_hook register_module register_parameter
register_state_dict_post_hook register_state_dict_pre_hook requires_grad_ set_extra_state
set_submodule share_memory spec state_dict to to_empty train training type xpu zero_grad
graph generate generation_context generation_step _context_batch decoding cannot_generate
smart_apply
""".split())

# Names the generated source itself uses (see backends/torch/codegen.py RESERVED).
CODEGEN_NAMES = frozenset({"self", "torch", "nn", "mm", "layer", "outputs", "losses",
                           "return_losses", "super", "sum", "float"})


def why_reserved(name: str) -> str | None:
    """Why `name` cannot name a layer, or None when it can."""
    if keyword.iskeyword(name):
        return f"'{name}' is a Python keyword"
    if name.startswith("__"):
        return "Python keeps names that start with '__' private to one class"
    if name in MODULE_ATTRIBUTES:
        return f"torch modules already have '{name}'"
    return why_reserved_input(name)


def why_reserved_input(name: str) -> str | None:
    """Why `name` cannot name an input (a parameter of the generated `forward`, and the key
    a batch is passed by), or None when it can."""
    if keyword.iskeyword(name):
        return f"'{name}' is a Python keyword"
    if name in CODEGEN_NAMES:
        return f"the generated code uses '{name}' itself"
    renamed = py_name(name, CODEGEN_NAMES)
    if renamed != name:
        return f"the generated code would have to call it '{renamed}'"
    return None
