"""Fusion methods: the registry (:mod:`~stages.methods.registry`), the learned methods' specs
(:mod:`~stages.methods.specs`) and the entries that adapt a
classical rule (:mod:`~stages.methods.classical`) or a network to ``fuse(ir, vis) -> fused``
(:mod:`~stages.methods.learned`, :mod:`~stages.methods.text`, :mod:`~stages.methods.mgfusion`),
with the guidance the text-guided ones compute when a record has none (:mod:`~stages.methods.guidance`)."""
