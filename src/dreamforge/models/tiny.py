"""Build a tiny, random-weight SDXL pipeline for tests and demos.

The shapes mirror SDXL wherever diffusers inspects them (see shared/TINY_SDXL.md), so the
same model also round-trips through the single-file checkpoint format: three UNet down
blocks in SDXL's order, text-time conditioning, two text encoders of different widths, the
second with at least ten layers.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

TEXT_WIDTH_1 = 32
TEXT_WIDTH_2 = 64
TIME_EMBED_DIM = 8
BUILD_SEED = 0


def alphabet_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single characters: no merges, so every word splits into letters."""
    symbols = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = ["<|startoftext|>", "<|endoftext|>"] + symbols + [f"{s}</w>" for s in symbols]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def _text_config(width: int, layers: int, vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=width,
        intermediate_size=width * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=77,
        vocab_size=vocab_size,
        projection_dim=width,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def build_tiny_sdxl() -> StableDiffusionXLPipeline:
    """Return a freshly initialised tiny SDXL pipeline; same weights on every call."""
    torch.manual_seed(BUILD_SEED)
    tokenizer = alphabet_tokenizer()
    vocab_size = len(tokenizer.get_vocab())
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        norm_num_groups=32,
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=TEXT_WIDTH_1 + TEXT_WIDTH_2,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_WIDTH_2,
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.13025,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(_text_config(TEXT_WIDTH_1, 2, vocab_size)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(TEXT_WIDTH_2, 10, vocab_size)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )


def write_tiny_sdxl(target: Path) -> Path:
    """Save the tiny pipeline as a diffusers folder (safetensors) at ``target``."""
    build_tiny_sdxl().save_pretrained(target, safe_serialization=True)
    return target


def write_tiny_sdxl_single_file(target: Path) -> Path:
    """The same tiny pipeline as one original-layout ``.safetensors`` file (CivitAI's
    format), which loads offline with the config shipped in ``configs/tiny-sdxl``."""
    from dreamforge.models.original_layout import write_single_file

    return write_single_file(build_tiny_sdxl(), target)


def write_tiny_upscaler(target: Path) -> Path:
    """A tiny random 2x ESRGAN (8 filters, one RRDB block), saved as ``target`` in the
    layout spandrel recognises; seeded, so every build is the same. Its images are noise,
    like the tiny SDXL's: it is for tests and trying chains, not for looking at."""
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(BUILD_SEED)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=2)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in net.state_dict().items()}, target)
    return target
