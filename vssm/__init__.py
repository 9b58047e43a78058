"""vssm: visual state-space (Mamba) backbones as timm models.

``import vssm`` registers every family with timm (``timm.create_model('vmamba_tiny')``).
"""
from . import layers
from ._checkpoint import CheckpointMismatchError, remap_state_dict, unwrap_state_dict
from . import vmamba
from .vmamba import VMamba
from . import groupmamba  # noqa: E402  (GroupMamba family, issue 6)
from . import efficientvmamba  # noqa: E402  (EfficientVMamba family, issue 5)
from . import localmamba  # noqa: E402  (LocalMamba family, issue 4)

__all__ = ["layers", "vmamba", "VMamba", "CheckpointMismatchError", "remap_state_dict", "unwrap_state_dict"]
