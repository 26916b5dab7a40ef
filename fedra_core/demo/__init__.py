"""The offline demo's assets: the digits benchmark and the pre-trained demo backbones.

The ``demo-vit`` and ``demo-mixer`` presets are listed in ``fedra_core.backbones.PRESETS``, which
names ``fedra_core.demo.backbone.demo_backbone_file`` as their weights builder; nothing needs to
import this package for them to resolve.
"""
