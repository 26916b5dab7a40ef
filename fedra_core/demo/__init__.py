"""The offline demo's assets: the digits benchmark and the pre-trained demo backbones.

Importing this package registers the ``demo-vit`` and ``demo-mixer`` backbone presets (their
weights are pre-trained on first use). The engine and the methods never import it; the apps do,
so that a run config naming a demo backbone works everywhere.
"""

from fedra_core.backbones import Preset, register_preset
from fedra_core.demo.backbone import DEMO_PRESETS, demo_backbone_file

for _name, (_family, _kwargs) in DEMO_PRESETS.items():
    register_preset(_name, Preset(_family, _kwargs, demo_backbone_file))
