"""vssm: visual state-space (Mamba) backbones as timm models.

``import vssm`` registers every family with timm (``timm.create_model('vmamba_tiny')``).
It also allows, for ``torch.load(weights_only=True)`` process-wide, the two harmless non-tensor classes that official
release files carry (``argparse.Namespace``; yacs ``CfgNode``, read as inert data), so timm's loader takes them.
"""
import torch as _torch

from . import layers
from ._checkpoint import (CheckpointMismatchError, UnsafeCheckpointError, load_checkpoint_file, official_file_globals,
                          match_state_dict, unwrap_state_dict)
from . import vmamba
from .vmamba import VMamba
from . import groupmamba  # noqa: E402  (GroupMamba family, issue 6)
from . import efficientvmamba  # noqa: E402  (EfficientVMamba family, issue 5)
from . import localmamba  # noqa: E402  (LocalMamba family, issue 4)
from . import mambavision  # noqa: E402  (MambaVision family, issue 17)
from . import vim  # noqa: E402  (Vim family, issue 19)
from . import mamband  # noqa: E402  (Mamba-ND family, issue 19)
from . import vssd  # noqa: E402  (VSSD family, issue 18)

_torch.serialization.add_safe_globals(official_file_globals())

__all__ = ["layers", "vmamba", "VMamba", "CheckpointMismatchError", "UnsafeCheckpointError",
           "load_checkpoint_file", "match_state_dict", "unwrap_state_dict"]
