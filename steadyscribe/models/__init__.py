"""Model provisioning: resolve a model spec to a local checkpoint in the format an engine loads.

Entry points live in steadyscribe.models.provision (provision, load_openai_whisper, alignment_heads).
"""
