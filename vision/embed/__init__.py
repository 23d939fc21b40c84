"""Face embedders: aligned chips in, unit-length templates out (see base.Embedder)."""
from vision.embed.base import Embedder, InputSpec
from vision.embed.runtime import OnnxEmbedder, load_embedder

__all__ = ["Embedder", "InputSpec", "OnnxEmbedder", "load_embedder"]
