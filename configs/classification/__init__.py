"""The classification training recipes (YAML files beside this one), installed as the package ``vssm.recipes``."""
