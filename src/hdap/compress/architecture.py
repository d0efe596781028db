"""The architecture a search is learning: its logits, and the probabilities and hard choices they give.

Each channel granule has a keep logit, each removable residual branch a branch logit, each
searched layer a logit per precision of the menu. In training a granule is kept with probability
sigmoid(logit / temperature) and a layer's precision is softmax(logits / temperature); lowering
the temperature makes the choices crisp; `freeze()` makes them hard (keep a granule whose logit is
above `keep_threshold`, the argmax precision) for the final fine-tune and export.

The branch logit is what lets the search remove the right branches on launch-bound devices, where
only a branch removed as a whole saves time: without it a branch lives while any of its granules
does, so narrow branches (few granules) vanish first whatever they are worth to the task.
"""

from __future__ import annotations

import torch
from torch import nn

from hdap.compress.space import SearchSpace

KEEP_LOGIT_INIT = 2.0  # every channel starts kept (probability 0.88 at temperature 1)


def layer_key(layer: str) -> str:
    """A layer's name as a ParameterDict key (no dots)."""
    return layer.replace(".", "__")


class ArchitectureLogits(nn.Module):
    def __init__(self, space: SearchSpace, branch_groups: list[int]) -> None:
        """`branch_groups`: the removable groups whose branch the model can scale (each gets a branch logit)."""
        super().__init__()
        self.space = space
        self.temperature = 1.0
        self.frozen = False
        self.keep_threshold = 0.0  # a granule is kept when its logit is above this, once frozen
        self.keep_logits = nn.ParameterList(
            [nn.Parameter(torch.full((g.granules,), KEEP_LOGIT_INIT)) for g in space.groups])
        # ParameterDicts sort plain dicts' keys: look logits up by name, never by position.
        self.branch_logits = nn.ParameterDict({str(g): nn.Parameter(torch.tensor(KEEP_LOGIT_INIT)) for g in branch_groups})
        self.precision_logits = nn.ParameterDict(
            {layer_key(s.name): nn.Parameter(torch.zeros(len(space.precisions))) for s in space.layers if s.name not in space.protected})
        for index, group in enumerate(space.groups):
            self.register_buffer(f"granule_of_channel_{index}", group.granule_of_channel(), persistent=False)

    def lean_to_precision(self, index: int) -> None:
        """Every searched layer leaning to precision `index` of the menu as firmly as every channel
        starts kept (once frozen: at that precision). A search that starts so begins at the model
        quantised (int8 costs a pre-trained CNN little accuracy) and moves a layer back to a wider
        precision where the task loss asks for it, instead of beginning halfway and settling
        precisions by the noise of the first steps."""
        with torch.no_grad():
            for logits in self.precision_logits.values():
                logits.copy_(KEEP_LOGIT_INIT * nn.functional.one_hot(torch.tensor(index), len(logits)).float())

    def granule_of_channel(self, group: int) -> torch.Tensor:
        return getattr(self, f"granule_of_channel_{group}")

    def parameters_to_search(self) -> list[nn.Parameter]:
        return list(self.keep_logits) + list(self.branch_logits.values()) + list(self.precision_logits.values())

    # -- probabilities ------------------------------------------------------------------------
    def keep_probabilities(self, group: int) -> torch.Tensor:
        """Per root channel of a group: the probability it is kept."""
        if self.frozen:
            per_granule = torch.tensor(self.kept_granules(group), dtype=torch.float32)
        else:
            per_granule = torch.sigmoid(self.keep_logits[group] / self.temperature)
        return per_granule[self.granule_of_channel(group)]

    def alive_probability(self, group: int) -> torch.Tensor:
        """The probability a group keeps any granule (1 for groups that may not vanish)."""
        if not self.space.groups[group].removable:
            return torch.ones((), dtype=torch.float64)
        if self.frozen:
            return torch.tensor(float(any(self.kept_granules(group))), dtype=torch.float64)
        dropped = 1 - torch.sigmoid(self.keep_logits[group] / self.temperature).to(torch.float64)
        return self.branch_probability(group).to(torch.float64) * (1 - dropped.prod())

    def branch_probability(self, group: int) -> torch.Tensor:
        """The soft probability a removable group's branch stays by its branch logit (1 without one)."""
        if str(group) not in self.branch_logits:
            return torch.ones(())
        return torch.sigmoid(self.branch_logits[str(group)] / self.temperature)

    def precision_probabilities(self, layer: str) -> torch.Tensor:
        precisions = self.space.precisions
        if layer in self.space.protected:
            return torch.tensor([float(p == self.space.default_precision) for p in precisions])
        logits = self.precision_logits[layer_key(layer)]
        if self.frozen:
            return nn.functional.one_hot(logits.argmax(), len(precisions)).float()
        return torch.softmax(logits / self.temperature, dim=0)

    def soft_precisions(self) -> dict[str, torch.Tensor]:
        """Every searched layer's precision mix from one softmax (soft, not frozen; else empty)."""
        if self.frozen or not len(self.precision_logits):
            return {}
        names = [s.name for s in self.space.layers if s.name not in self.space.protected]
        soft = torch.softmax(torch.stack([self.precision_logits[layer_key(n)] for n in names]) / self.temperature, dim=1)
        return dict(zip(names, soft.unbind(0)))

    # -- hard choices -------------------------------------------------------------------------
    def kept_granules(self, group: int) -> list[bool]:
        """The hard decision: keep granules with a logit above the threshold. A group that is not
        removable keeps at least its most important granule; a removable one may lose them all, and
        loses them all when its branch logit is at or below the threshold."""
        kept = [bool(v > self.keep_threshold) for v in self.keep_logits[group].detach()]
        if str(group) in self.branch_logits and not float(self.branch_logits[str(group)].detach()) > self.keep_threshold:
            return [False] * len(kept)
        if not any(kept) and not self.space.groups[group].removable:
            kept[0] = True
        return kept

    def freeze(self) -> None:
        """Hard decisions from now on: the architecture the fine-tune and export see."""
        self.frozen = True
        for parameter in self.parameters_to_search():
            parameter.requires_grad_(False)

    def reorder_branches(self, order: list[str]) -> None:
        """Hand the branches' removal values to the branches in `order` (its first gets the lowest):
        any threshold then removes as many branches as before, the first ones of `order`.
        A branch goes when its logit or every one of its granules' logits is at or below the
        threshold, so its value is min(branch logit, best granule logit); a branch handed a value
        above its best granule has its granule logits raised by the difference (their ranking kept)."""
        with torch.no_grad():
            def value(key: str) -> float:
                return min(float(self.branch_logits[key]), float(self.keep_logits[int(key)].max()))
            # strictly increasing along the order, so equal values still go one branch at a time
            targets = [v + 1e-7 * rank for rank, v in enumerate(sorted(value(key) for key in order))]
            for key, target in zip(order, targets):
                self.branch_logits[key].fill_(target)
                best_granule = float(self.keep_logits[int(key)].max())
                if best_granule < target:
                    self.keep_logits[int(key)].add_(target - best_granule)
