"""The style library, a module per concern: ``manifest`` (a style's ``style.yaml``: the id, version and file-name
patterns and the pydantic schema), ``bounded_yaml`` (YAML read within limits, for uploads), ``folder`` (one style
folder on a filesystem: manifest, LoRA, preview) and ``catalog`` (the versioned library: versions, state,
publishing). A style version is immutable; ``<id>@<version>`` names it everywhere (it is the multiplexed model id).
"""
