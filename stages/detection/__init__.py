"""Detection support for ``fuse detect`` and the detection-aware trainers: ground-truth labels and
their evaluation (:mod:`~stages.detection.evaluation`), YOLO datasets and detector training
(:mod:`~stages.detection.dataset`), and a frozen detector's loss on fused images (:mod:`~stages.detection.loss`)."""
