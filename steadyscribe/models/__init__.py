"""Model provisioning: resolve a model spec to a local checkpoint in the format an engine loads.

Entry points live in steadyscribe.models.provision (provision, load_openai_whisper, alignment_heads);
the cache layout in .cache, pip-packaged checkpoints in .bundled, downloads in .download,
alignment heads in .alignment, format conversions in .convert and .ct2, quantization in .quantize.
"""


class ModelUnavailableError(RuntimeError):
    """The spec cannot be resolved to a local model (unknown, incomplete, or offline)."""
