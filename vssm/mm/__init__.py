"""OpenMMLab (mmdet 3.x / mmseg 1.x) adapters for the vssm backbones.

``import vssm.mm`` (or ``custom_imports=dict(imports=['vssm.mm'])`` in a config)

* applies the run-time compatibility fixes of :mod:`vssm.mm.compat` (torch >= 2.6 checkpoint loading,
  setuptools without ``pkg_resources``);
* registers ``VSSMBackbone`` (every vssm family, chosen by ``arch``) with mmengine's root ``MODELS`` and
  with mmdet's / mmseg's ``MODELS`` where those are installed;
* registers ``VSSMOptimWrapperConstructor`` (no weight decay on SSM parameters, optional layer-wise lr decay);
* registers the neck ``EfficientViTFPN`` (EfficientViM's official detection FPN, :mod:`vssm.mm.efficientvit_fpn`).

Needs ``mmengine`` (and ``mmcv`` with ops, ``mmdet`` / ``mmsegmentation`` for the detectors / segmentors):
``tools/build_mmcv_wheel.sh`` installs the tested stack.
"""
from . import compat

compat.apply()

import vssm  # noqa: E402,F401  (registers the timm families)
from mmengine.registry import MODELS as _ROOT_MODELS  # noqa: E402
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as _ROOT_CONSTRUCTORS  # noqa: E402

from .backbone import VSSMBackbone, list_archs, load_backbone_checkpoint  # noqa: E402
from .optim import VSSMOptimWrapperConstructor, backbone_layer_ids  # noqa: E402

try:  # the EfficientViM detection neck needs mmcv's ConvModule
    from .efficientvit_fpn import EfficientViTFPN  # noqa: E402
except ImportError:  # pragma: no cover
    EfficientViTFPN = None

__all__ = ["VSSMBackbone", "VSSMOptimWrapperConstructor", "list_archs", "load_backbone_checkpoint",
           "backbone_layer_ids", "compat", "registered_in"]
__all__.append("EfficientViTFPN")


def _register() -> list:
    done = []
    targets = [("mmengine", _ROOT_MODELS, _ROOT_CONSTRUCTORS)]
    for pkg in ("mmdet", "mmseg"):
        try:
            registry = __import__(f"{pkg}.registry", fromlist=["MODELS", "OPTIM_WRAPPER_CONSTRUCTORS"])
        except ImportError:
            continue
        targets.append((pkg, registry.MODELS, registry.OPTIM_WRAPPER_CONSTRUCTORS))
    for pkg, models, constructors in targets:
        models.register_module(name="VSSMBackbone", module=VSSMBackbone, force=True)
        if EfficientViTFPN is not None:
            models.register_module(name="EfficientViTFPN", module=EfficientViTFPN, force=True)
        constructors.register_module(name="VSSMOptimWrapperConstructor", module=VSSMOptimWrapperConstructor,
                                     force=True)
        done.append(pkg)
    return done


registered_in = _register()
