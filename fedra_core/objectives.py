"""What a model is trained and scored on: the one seam between classification and causal language modelling.

A model family names its :class:`Objective` (``ModelFamily.objective``). Training (the methods' loss),
evaluation (plain and streamed), head calibration and DepthFL's exits reach labels only through it:

* :data:`CLASSIFICATION` (the timm families, ``hf-encoder``): one label per example, the head's logits
  (N, classes); top-1 accuracy and mean cross-entropy per example.
* :data:`CAUSAL_LM` (``hf-causal-lm``): labels (N, T) aligned with the input ids, ``-100`` where no
  loss is taken (prompt, padding), the token ids of the response elsewhere; the prediction at position
  t scores the label at t + 1 (transformers' shift). Only those positions go through the output layer,
  in chunks, so a batch never holds (N, T, vocab) logits. Accuracy is next-token accuracy and the loss
  the mean token NLL over response tokens; ``perplexity`` = exp(mean NLL).

Every objective reduces a batch to :class:`Scores` (loss sum, correct predictions, scored targets),
which pool exactly across batches, groups of blocks and nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label of a position that takes no loss (transformers' ignore_index)
HEAD_CHUNK = 1024  # causal LM: target positions that go through the output layer at once


class ModelFamily(Protocol):
    """What an objective uses of a model family (:class:`fedra_core.families.base.ModelFamily`)."""

    def embed(self, model: nn.Module, x: torch.Tensor) -> Any: ...  # noqa: D102
    def run_blocks(self, model: nn.Module, tokens: Any, context: Any = None) -> Any: ...  # noqa: D102
    def tokens_of(self, hidden: Any) -> torch.Tensor: ...  # noqa: D102
    def head(self, model: nn.Module, tokens: Any) -> torch.Tensor: ...  # noqa: D102


@dataclass(frozen=True)
class Scores:
    """Sums over a batch: ``loss_sum`` (summed NLL), ``correct`` (top-1 hits) and ``targets`` (scored predictions)."""

    loss_sum: float
    correct: int
    targets: int

    def __add__(self, other: "Scores") -> "Scores":
        return Scores(self.loss_sum + other.loss_sum, self.correct + other.correct, self.targets + other.targets)


NO_SCORES = Scores(0.0, 0, 0)


class Objective:
    """How a family's outputs meet its labels. Subclasses define :meth:`select`; the rest follows.

    Class attributes: ``name`` and ``derived`` (the extra per-domain figures the server writes besides
    accuracy and loss, e.g. ``("perplexity",)``).
    """

    name: ClassVar[str]
    derived: ClassVar[tuple[str, ...]] = ()

    def select(self, family: ModelFamily, hidden: Any, labels: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Return (what the family's head maps to logits, the matching 1-D labels) for the last block's
        output ``hidden`` and a batch's ``labels``."""
        raise NotImplementedError

    def logits(self, family: ModelFamily, model: nn.Module, features: Any) -> torch.Tensor:
        """Return the float logits (n, outputs) of the selected ``features``."""
        return family.head(model, features).float()

    def hidden_loss(self, family: ModelFamily, model: nn.Module, hidden: Any, labels: torch.Tensor) -> torch.Tensor:
        """Return the mean loss of the head on the last block's output ``hidden`` (head calibration)."""
        features, y = self.select(family, hidden, labels)
        return F.cross_entropy(self.logits(family, model, features), y)

    def outputs(
        self, family: ModelFamily, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the float logits (n, outputs) of ``model`` (all its held blocks) on the scored
        predictions of a batch, and their 1-D labels."""
        features, y = self.select(family, family.run_blocks(model, family.embed(model, inputs)), labels)
        return self.logits(family, model, features), y

    def loss(self, family: ModelFamily, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the mean training loss of ``model`` on a batch (the methods' default loss)."""
        return self.hidden_loss(family, model, family.run_blocks(model, family.embed(model, inputs)), labels)

    def hidden_scores(self, family: ModelFamily, model: nn.Module, hidden: Any, labels: torch.Tensor) -> Scores:
        """Return the :class:`Scores` of the head on the last block's output ``hidden``."""
        features, y = self.select(family, hidden, labels)
        return _scores(self.logits(family, model, features), y)

    def scores(self, family: ModelFamily, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> Scores:
        """Return the :class:`Scores` of ``model`` (all its held blocks) on a batch."""
        return self.hidden_scores(family, model, family.run_blocks(model, family.embed(model, inputs)), labels)

    def derived_figures(self, mean_loss: float) -> dict[str, float]:
        """Return the extra figures of a pooled mean loss (none for classification)."""
        return {}


def _scores(logits: torch.Tensor, y: torch.Tensor) -> Scores:
    if len(y) == 0:
        return NO_SCORES
    loss = float(F.cross_entropy(logits, y, reduction="sum"))
    return Scores(loss, int((logits.argmax(dim=1) == y).sum()), len(y))


class Classification(Objective):
    """One class label per example; the plain forward ``model(x)`` gives the logits."""

    name = "classification"

    def select(self, family: ModelFamily, hidden: Any, labels: torch.Tensor) -> tuple[Any, torch.Tensor]:  # noqa: D102
        return hidden, labels

    def outputs(
        self, family: ModelFamily, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The plain forward's logits ``model(inputs)`` (the final head's) and the labels."""
        return model(inputs).float(), labels

    def loss(self, family: ModelFamily, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``model(inputs)`` (its plain forward: the final head's logits)."""
        return F.cross_entropy(model(inputs).float(), labels)

    def scores(self, family: ModelFamily, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> Scores:
        """Summed cross-entropy and top-1 hits of ``model(inputs)``."""
        return _scores(model(inputs).float(), labels)


class CausalLM(Objective):
    """Next-token prediction on the positions whose (shifted) label is not ``-100``."""

    name = "causal-lm"
    derived = ("perplexity",)

    def select(self, family: ModelFamily, hidden: Any, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The token states at t (N, T-1) whose label at t + 1 counts, flattened to (n, width), and those labels (n,)."""
        tokens = family.tokens_of(hidden)
        shifted = labels[:, 1:].to(tokens.device)
        keep = shifted != IGNORE
        return tokens[:, :-1][keep], shifted[keep]

    def hidden_loss(self, family: ModelFamily, model: nn.Module, hidden: Any, labels: torch.Tensor) -> torch.Tensor:
        """Mean token NLL over the response tokens (zero, with a graph, for a batch without any)."""
        features, y = self.select(family, hidden, labels)
        if len(y) == 0:
            return features.sum() * 0.0
        return F.cross_entropy(self.logits(family, model, features), y)

    def hidden_scores(self, family: ModelFamily, model: nn.Module, hidden: Any, labels: torch.Tensor) -> Scores:
        """Summed token NLL, next-token hits and response tokens, through the output layer in chunks."""
        features, y = self.select(family, hidden, labels)
        out = NO_SCORES
        for start in range(0, len(y), HEAD_CHUNK):
            part = slice(start, start + HEAD_CHUNK)
            out = out + _scores(self.logits(family, model, features[part]), y[part])
        return out

    def derived_figures(self, mean_loss: float) -> dict[str, float]:
        """``perplexity`` = exp(mean token NLL) (inf beyond float range)."""
        return {"perplexity": math.exp(mean_loss) if mean_loss < 700 else math.inf}


CLASSIFICATION = Classification()
CAUSAL_LM = CausalLM()
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (CLASSIFICATION, CAUSAL_LM)}
