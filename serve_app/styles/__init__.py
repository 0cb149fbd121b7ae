"""The style library, a module per concern: ``manifest`` (a style's ``style.yaml``: the id, version and file-name
patterns and the pydantic schema), ``bounded_yaml`` (YAML read within limits, for uploads), ``folder`` (one style
folder on a filesystem: manifest, LoRA, preview; storage faults as ``store_unavailable``), ``store`` (the library's
storage: layout, versions read once, publishing, state, change markers), ``view`` (the freshness rule: what a
replica knows of the library and how it keeps that current) and ``catalog`` (statuses by the clock: what the
service uses). A style version is immutable; ``<id>@<version>`` names it everywhere (it is the multiplexed model id).
"""
