"""Classification training/evaluation engine (ImageNet recipes, DDP, AMP, EMA, resume).

Entry points: :func:`vssm.engine.train.main` (``vssm-train``) and :func:`vssm.engine.validate.main`
(``vssm-validate``).  Submodules are imported lazily so ``import vssm`` stays light.
"""
__all__ = ["config", "data", "digits", "dist", "optim", "checkpoint", "metrics", "train", "validate"]
