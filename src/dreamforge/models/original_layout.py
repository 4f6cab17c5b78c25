"""An SDXL pipeline's weights in the original single-file layout (Stability's, which CivitAI
ships), so that a model built here can be written as one ``.safetensors`` file.

diffusers only reads this layout (``from_single_file``); the names below are the inverse of
its converter, worked out from the block structure in each component's config rather than
from a table for one size, so the tiny model maps as well as a full-size one. The tests
prove the mapping by loading the file back through diffusers and getting the same pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TEXT_1 = "conditioner.embedders.0.transformer."
TEXT_2 = "conditioner.embedders.1.model."

UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _split(key: str, prefixes: dict[str, str]) -> tuple[str, str]:
    """The longest of ``prefixes`` that ``key`` starts with, and the rest of the key."""
    for old in sorted(prefixes, key=len, reverse=True):
        if key.startswith(old + "."):
            return old, key[len(old) + 1 :]
    raise ValueError(f"no original name for weight {key}")


def _unet_prefixes(config: Any) -> dict[str, str]:
    layers = config.layers_per_block
    prefixes = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
    }
    for i in range(len(config.down_block_types)):
        for j in range(layers):
            block = f"input_blocks.{1 + i * (layers + 1) + j}"
            prefixes[f"down_blocks.{i}.resnets.{j}"] = f"{block}.0"
            prefixes[f"down_blocks.{i}.attentions.{j}"] = f"{block}.1"
        prefixes[f"down_blocks.{i}.downsamplers.0.conv"] = (
            f"input_blocks.{(i + 1) * (layers + 1)}.0.op"
        )
    for i, kind in enumerate(config.up_block_types):
        for j in range(layers + 1):
            block = f"output_blocks.{i * (layers + 1) + j}"
            prefixes[f"up_blocks.{i}.resnets.{j}"] = f"{block}.0"
            prefixes[f"up_blocks.{i}.attentions.{j}"] = f"{block}.1"
        # The upsampler follows the last resnet, after its attention where there is one.
        slot = 2 if kind.startswith("CrossAttn") else 1
        prefixes[f"up_blocks.{i}.upsamplers.0"] = (
            f"output_blocks.{i * (layers + 1) + layers}.{slot}"
        )
    return prefixes


def _unet(unet: Any) -> Iterator[tuple[str, torch.Tensor]]:
    prefixes = _unet_prefixes(unet.config)
    for key, tensor in unet.state_dict().items():
        old, rest = _split(key, prefixes)
        if ".resnets." in old:
            module, _, leaf = rest.rpartition(".")
            rest = f"{UNET_RESNET[module]}.{leaf}"
        yield f"{UNET}{prefixes[old]}.{rest}", tensor


def _vae_prefixes(config: Any) -> dict[str, str]:
    blocks = len(config.block_out_channels)
    layers = config.layers_per_block
    prefixes = {
        "encoder.conv_norm_out": "encoder.norm_out",
        "decoder.conv_norm_out": "decoder.norm_out",
    }
    for part in ("encoder", "decoder"):
        for k in range(2):
            prefixes[f"{part}.mid_block.resnets.{k}"] = f"{part}.mid.block_{k + 1}"
        prefixes[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
    for i in range(blocks):
        for j in range(layers):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0"] = f"encoder.down.{i}.downsample"
        # The decoder's blocks are numbered from the bottom up in the original layout.
        up = blocks - 1 - i
        for j in range(layers + 1):
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{up}.block.{j}"
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0"] = f"decoder.up.{up}.upsample"
    return prefixes


def _vae(vae: Any) -> Iterator[tuple[str, torch.Tensor]]:
    prefixes = _vae_prefixes(vae.config)
    for key, tensor in vae.state_dict().items():
        try:
            old, rest = _split(key, prefixes)
        except ValueError:  # conv_in, conv_out, quant_conv…: the same name in both layouts
            yield VAE + key, tensor
            continue
        if ".attentions." in old:
            module, _, leaf = rest.rpartition(".")
            rest = f"{VAE_ATTENTION[module]}.{leaf}"
            if leaf == "weight" and module != "group_norm":
                tensor = tensor.reshape(*tensor.shape, 1, 1)  # a 1x1 convolution there
        elif ".resnets." in old:
            rest = rest.replace("conv_shortcut.", "nin_shortcut.")
        yield f"{VAE}{prefixes[old]}.{rest}", tensor


def _text_model_key(key: str) -> str:
    # transformers >= 5.6 dropped the ``text_model.`` level from CLIPTextModel's own keys.
    return key if key.startswith("text_model.") else f"text_model.{key}"


def _openai_clip(encoder: Any) -> Iterator[tuple[str, torch.Tensor]]:
    for key, tensor in encoder.state_dict().items():
        if not key.endswith("position_ids"):
            yield TEXT_1 + _text_model_key(key), tensor


def _open_clip(encoder: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """OpenCLIP's layout: fused attention input projections, a transposed projection."""
    weights = {
        _text_model_key(k).removeprefix("text_model."): v for k, v in encoder.state_dict().items()
    }
    for key, tensor in weights.items():
        if key.endswith("position_ids") or ".self_attn.q_proj." in key:
            continue
        if ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue
        if key == "embeddings.token_embedding.weight":
            yield TEXT_2 + "token_embedding.weight", tensor
        elif key == "embeddings.position_embedding.weight":
            yield TEXT_2 + "positional_embedding", tensor
        elif key.startswith("final_layer_norm."):
            yield TEXT_2 + "ln_final." + key.rpartition(".")[2], tensor
        elif key == "text_projection.weight":
            yield TEXT_2 + "text_projection", tensor.T.contiguous()
        elif key.startswith("encoder.layers."):
            _, _, layer, inner = key.split(".", 3)
            module, _, leaf = inner.rpartition(".")
            yield f"{TEXT_2}transformer.resblocks.{layer}.{OPEN_CLIP_LAYER[module]}.{leaf}", tensor
        else:
            raise ValueError(f"no original name for text encoder 2 weight {key}")
    for n in range(encoder.config.num_hidden_layers):
        for leaf in ("weight", "bias"):
            parts = [weights[f"encoder.layers.{n}.self_attn.{p}_proj.{leaf}"] for p in "qkv"]
            yield f"{TEXT_2}transformer.resblocks.{n}.attn.in_proj_{leaf}", torch.cat(parts)


def original_sdxl_weights(pipe: Any) -> dict[str, torch.Tensor]:
    """Every weight of an SDXL pipeline, named as in an original single-file checkpoint."""
    weights: dict[str, torch.Tensor] = {}
    for name, tensor in (
        *_unet(pipe.unet),
        *_vae(pipe.vae),
        *_openai_clip(pipe.text_encoder),
        *_open_clip(pipe.text_encoder_2),
    ):
        if name in weights:
            raise ValueError(f"two weights map to {name}")
        weights[name] = tensor.detach().contiguous()
    return weights


def write_single_file(pipe: Any, target: Path) -> Path:
    """``pipe``'s weights as one original-layout ``.safetensors`` file at ``target``."""
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(original_sdxl_weights(pipe), target)
    return target
