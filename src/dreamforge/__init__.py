"""Dream Forge: an API-first render fabric for SDXL image generation."""

__version__ = "0.1.0"
