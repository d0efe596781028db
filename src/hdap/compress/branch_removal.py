"""Which residual branches to remove first: the ones whose removal harms the model least, measured.

The search decides how many branches a cost target removes; which ones is better measured than
read off the branch logits. A logit follows the task loss's gradient at a branch probability near
1 while the weights adapt around the soft scale, and says little about what removing the branch
does (Wang et al., "Rethinking Architecture Selection in Differentiable NAS", ICLR 2021, found
the same of DARTS's architecture weights). On digits, the search at target 0.4 removed the first
block and both downsampling blocks, three of the four branches whose removal alone harms the
pre-trained ResNet-20 most, and kept stages 7 and 8, two of the three that harm it least; the
fine-tune ended at 91.6%.

So the order is measured on the model the fine-tune starts from, the pre-trained one: greedily,
the branch whose removal raises the training loss least goes first, then the next given that one
is gone, each candidate with its batch norms' statistics measured afresh (Li et al., "EagleEye",
ECCV 2020: after that, a pruned model's accuracy ranks candidates as their fine-tuned accuracy
does). Two forward passes over a fixed sample of the training set per candidate: 4 s on one core
for ResNet-20 (9 branches) on 8x8 inputs. Trying every remaining branch in every round is n(n+1)/2
candidates, 378 for ResNet-56's 27 branches on 32x32 images (over 12 minutes on 2 cores); so after
the first round, in which every branch is tried alone, a round tries only the `CANDIDATES_PER_ROUND`
remaining branches that measured least harmful when last tried (a branch that harms the model much
on its own rarely becomes the least harmful later): 27 + 141 candidates for ResNet-56, 42 instead
of 45 for ResNet-20. The order ignores what each branch costs, so `SearchConfig.branch_order`
applies it to the latency objective only.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.utils.data import Dataset

from hdap.compress.searchable import SearchableModel
from hdap.compress.space import SearchSpace

log = logging.getLogger("hdap")
SAMPLE_EXAMPLES = 256
RECALIBRATION_BATCH = 64  # the training batch size: batch statistics as training sees them
CANDIDATES_PER_ROUND = 6


def _sample(dataset: Dataset, examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random sample (datasets may be stored in class order)."""
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:examples]
    xs, ys = zip(*(dataset[int(i)] for i in chosen))
    return torch.stack(xs), torch.stack(ys)


def branch_removal_order(model: nn.Module, space: SearchSpace, dataset: Dataset, seed: int = 0,
                         examples: int = SAMPLE_EXAMPLES) -> list[str]:
    """The removable branches (keys of `SearchableModel.branch_logits`) in the order to remove
    them, least harmful first, by the training loss of `model` with each one removed as the
    pruned model removes it (the branch adds its batch norm's constant)."""
    searchable = SearchableModel(copy.deepcopy(model), space)
    branches = list(searchable.branch_logits.keys())
    if not branches:
        return []
    searchable.freeze()
    searchable.eval()
    with torch.no_grad():
        for logits in searchable.precision_logits.values():  # every layer at the default precision
            logits.copy_(torch.tensor([float(p == space.default_precision) for p in space.precisions]))
        for logit in searchable.branch_logits.values():
            logit.fill_(1.0)
    x, y = _sample(dataset, examples, seed)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    log.info("measuring the harm of removing each of %d residual branches (%d images per candidate)", len(branches), len(x))

    norms = [m for m in searchable.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    pristine = copy.deepcopy(searchable.state_dict())

    def loss_without(removed: list[str]) -> float:
        with torch.no_grad():
            searchable.load_state_dict(pristine)
            for key in branches:
                searchable.branch_logits[key].fill_(-1.0 if key in removed else 1.0)
            # Batch norms re-measured without the branches (EagleEye's adaptive BN): the
            # statistics a few fine-tune steps would give, where the stale ones make every
            # model with more than a few branches gone look equally broken.
            searchable.train()
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # a plain average over the batches
            for start in range(0, len(x), RECALIBRATION_BATCH):
                searchable(x[start:start + RECALIBRATION_BATCH])
            searchable.eval()
            return float(nn.functional.cross_entropy(searchable(x), y))

    order: list[str] = []
    losses = []
    last_seen = {key: loss_without([key]) for key in branches}  # every branch alone, once
    while len(order) < len(branches):
        remaining = sorted((key for key in branches if key not in order), key=last_seen.__getitem__)
        tried = remaining[:CANDIDATES_PER_ROUND]
        trial = {key: loss_without([*order, key]) for key in tried} if order else {k: last_seen[k] for k in tried}
        last_seen.update(trial)
        best = min(trial, key=trial.get)
        order.append(best)
        losses.append(trial[best])
    roots = {str(g.index): g.root for g in space.groups}
    log.info("residual branches by measured harm, least first: %s",
             ", ".join(f"{roots[k]} ({loss:.3f})" for k, loss in zip(order, losses)))
    return order
