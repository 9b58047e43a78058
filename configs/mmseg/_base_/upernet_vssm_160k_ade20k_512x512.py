# UperNet on a vssm backbone, ADE20K 512x512 crops, 160k iterations: model + dataset + schedule + runtime in one
# base, so that a per-backbone config only names the backbone (arch, drop_path_rate, checkpoint) and head widths.
_base_ = [
    './models/upernet_vssm.py',
    './datasets/ade20k.py',
    './schedules/schedule_160k.py',
    './default_runtime.py',
]
crop_size = (512, 512)
model = dict(data_preprocessor=dict(size=crop_size))
