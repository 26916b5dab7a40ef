"""The run-config keys of per-block client-level differential privacy (``dp-*``), mixed into
:class:`fedra_core.run_config.RunConfig`, and their checks against the rest of the run."""

from __future__ import annotations

from pydantic import Field, model_validator

from fedra_core.methods import method_class
from fedra_core.privacy import DPSettings
from fedra_core.settings_model import SettingsModel


class PrivacyConfig(SettingsModel):
    """``dp-noise-multiplier`` z (0: off), ``dp-clip-norm`` C (the L2 bound of a node's whole update
    per round) and ``dp-delta`` (the delta at which epsilon is reported).

    Mixed into the run config (it reads the run's ``method`` and ``aggregation``): DP needs a method
    whose server step is the per-block mean of the holders (``Method.holder_mean``) and equal
    weights (``aggregation = uniform``: example counts are the nodes' own, unbounded claims, and a
    weighted sum would have another sensitivity).
    """

    dp_noise_multiplier: float = Field(0.0, alias="dp-noise-multiplier", ge=0)
    dp_clip_norm: float = Field(1.0, alias="dp-clip-norm", gt=0)
    dp_delta: float = Field(1e-5, alias="dp-delta", gt=0, lt=1)

    @model_validator(mode="after")
    def _dp_fits_the_run(self) -> "PrivacyConfig":
        z = self.dp_noise_multiplier
        if not z:
            return self
        method = getattr(self, "method", "")
        if method and not method_class(method).holder_mean:
            raise ValueError(
                f"config key 'dp-noise-multiplier' = {z!r}: method {method!r} does not aggregate by the per-block mean "
                "of the holders, so per-block DP cannot noise it; allowed with it: 0 (off)"
            )
        if getattr(self, "aggregation", "uniform") != "uniform":
            raise ValueError(
                f"config key 'aggregation' = {getattr(self, 'aggregation')!r} with dp-noise-multiplier = {z!r}: "
                "differential privacy needs equal weights; allowed: 'uniform'"
            )
        return self

    def dp_settings(self) -> DPSettings | None:
        """Return the run's DP settings, None when DP is off (``dp-noise-multiplier`` = 0)."""
        if not self.dp_noise_multiplier:
            return None
        return DPSettings(self.dp_noise_multiplier, self.dp_clip_norm, self.dp_delta)
