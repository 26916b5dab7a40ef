"""The offline demo's pre-trained backbones (the digits benchmark they are pre-trained on is a dataset: fedra_core.data.digits).

The ``demo-vit`` and ``demo-mixer`` presets are listed in ``fedra_core.backbones.PRESETS``, which
names ``fedra_core.demo.backbone.demo_backbone_file`` as their weights builder; nothing needs to
import this package for them to resolve.
"""
