"""Single-file SDXL checkpoints, loaded with nothing fetched: the configs shipped in
``dreamforge/models/configs`` and CLIP tokenizers built from the byte-pair merges shipped
there. (Given no config, diffusers downloads one from the Hub even when told
``local_files_only``.)"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from transformers import CLIPTokenizer

from dreamforge.models.shipped import CLIP_MERGES, ShippedConfig, config_for, safetensors_header
from dreamforge.models.tiny import alphabet_tokenizer

CLIP_START, CLIP_END = "<|startoftext|>", "<|endoftext|>"


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE gives the bytes, in GPT-2's (and
    CLIP's) order: the vocabulary's first ids."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


@cache
def _clip_vocabulary() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    lines = gzip.decompress(CLIP_MERGES.read_bytes()).decode("utf-8").splitlines()
    merges = tuple(tuple(line.split()) for line in lines[1:] if line)
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += [CLIP_START, CLIP_END]
    return {token: i for i, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def clip_tokenizer(pad_token: str) -> CLIPTokenizer:
    """CLIP's tokenizer (as openai/clip-vit-large-patch14 ships it), padding with ``pad_token``."""
    vocab, merges = _clip_vocabulary()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        bos_token=CLIP_START,
        eos_token=CLIP_END,
        unk_token=CLIP_END,
        pad_token=pad_token,
        model_max_length=77,
    )


def tokenizers(config: ShippedConfig) -> dict[str, CLIPTokenizer]:
    built = {}
    for name, recipe in config.tokenizers().items():
        if recipe["vocabulary"] == "alphabet":
            built[name] = alphabet_tokenizer()
        else:
            built[name] = clip_tokenizer(recipe["pad_token"])
    return built


def load_single_file(
    path: Path, dtype: torch.dtype, device: torch.device | None = None
) -> StableDiffusionXLPipeline:
    """An SDXL pipeline from one original-layout checkpoint, every config from the package.

    The UNet's and the VAE's weights (three quarters of SDXL's) go to ``device`` as they
    are read; diffusers builds the text encoders of a single file on the CPU whatever it
    is told, so the caller moves them."""
    config = config_for(safetensors_header(path))
    return StableDiffusionXLPipeline.from_single_file(
        str(path),
        config=str(config.folder),
        local_files_only=True,
        dtype=dtype,
        device=device,
        **tokenizers(config),
    )
