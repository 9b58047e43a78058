# Cascade Mask R-CNN FPN on a vssm backbone, COCO multi-scale + random-crop training, 36 epochs (the 3x recipe).
_base_ = [
    './models/cascade_mask_rcnn_vssm_fpn.py',
    './datasets/coco_instance_ms_crop.py',
    './schedules/schedule_3x.py',
    './default_runtime.py',
]
