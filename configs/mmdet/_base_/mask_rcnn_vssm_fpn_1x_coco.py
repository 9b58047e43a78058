# Mask R-CNN FPN on a vssm backbone, COCO single-scale, 12 epochs: model + dataset + schedule + runtime in one
# base, so that a per-backbone config only names the backbone (arch, drop_path_rate, checkpoint) and neck widths.
_base_ = [
    './models/mask_rcnn_vssm_fpn.py',
    './datasets/coco_instance.py',
    './schedules/schedule_1x.py',
    './default_runtime.py',
]
