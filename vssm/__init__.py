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
from . import groupmamba  # noqa: F401  (registers the GroupMamba models, issue 6)
from . import efficientvmamba  # noqa: F401  (registers the EfficientVMamba models, issue 5)
from . import localmamba  # noqa: F401  (registers the LocalMamba models, issue 4)
from . import mambavision  # noqa: F401  (registers the MambaVision models, issue 17)
from . import vim  # noqa: F401  (registers the Vim models, issue 19)
from . import mamband  # noqa: F401  (registers the Mamba-ND models, issue 19)
from . import vssd  # noqa: F401  (registers the VSSD models, issue 18)

_torch.serialization.add_safe_globals(official_file_globals())

__all__ = ["layers", "vmamba", "VMamba", "CheckpointMismatchError", "UnsafeCheckpointError",
           "load_checkpoint_file", "match_state_dict", "unwrap_state_dict"]
