"""Training objectives: each samples an epoch of batches and computes a batch loss.

- ``contrastive``: NT-Xent (InfoNCE) with in-batch negatives. The two views of an
  anchor are two *different* farm variants of the same layout (``group``: shift,
  dose, focus, bias), each further augmented; a group with one member pairs the
  item with an augmented copy of itself, and so does an item with an injected
  defect (a defect is not a variant). Other same-layout items in the batch are
  removed from the negatives rather than pushed away.
- ``supervised``: heads on the pooled features: family and defect classification,
  a cosine-margin (CosFace) classifier over training layouts on the embedding (what
  makes same-layout variants cluster), and a *print consistency* head that tells a
  mask with its own print from the same mask with the print of another layout.
  The latter is the before/after signal: it forces the trunk to relate the two
  channels instead of reading the mask alone, which is what a defect that shows
  only in the print needs.
- ``autoencoder``: mean squared reconstruction error of the (augmented) input.
- ``crossview``: the unified encoder. One shared trunk sees three views of each item:
  the full (mask, print) input, a *mask-only* view (the print and difference channels
  replaced by a learnable "absent" plane, the mask view token) and a *print-only* view
  (mask and difference replaced, the print view token). InfoNCE pulls an item's mask
  view to its own print view (both directions), with the rest of the batch as
  negatives: the trunk must learn what a mask prints as, so a print that its mask does
  not explain stands out. The full view, the only one inference sees, is pulled to
  both single views, so it is trained too. The tokens live in the objective, not the
  network: checkpoints keep their state-dict layout.
- ``contrastive+crossview``: the ``contrastive`` loss plus ``crossview_weight`` times the
  ``crossview`` loss on the same batch; the anchors' full views serve both, so a step
  costs one contrastive step plus the anchors' two single views.

In every InfoNCE here, other items of the anchor's variant group (``variant_keys``)
are left out of the negatives: they are the same layout, not something to push away.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared.model.nets import ConvAutoEncoder, ResNetEmbedder
from shared.model.preprocess import compose_channels, normalise
from toolkit.training.augment import augment_pair
from toolkit.training.data import NO_LABEL, TrainingSet

Batch = np.ndarray


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, groups: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over ``2B`` unit vectors; row ``i``'s positive is its other view."""
    b = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    g = torch.cat([groups, groups], dim=0)
    logits = (z @ z.T) / temperature
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    exclude = g[:, None] == g[None, :]
    exclude[torch.arange(2 * b, device=z.device), target] = False
    logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, target)


def info_nce(
    queries: torch.Tensor, keys: torch.Tensor, groups: torch.Tensor, temperature: float
) -> torch.Tensor:
    """InfoNCE from ``B`` queries to ``B`` keys (unit vectors); query ``i``'s positive is key ``i``.

    The other keys are the negatives, except those of another item of the query's
    group, which are left out (neither positive nor negative).
    """
    b = queries.shape[0]
    logits = (queries @ keys.T) / temperature
    own = torch.eye(b, dtype=torch.bool, device=queries.device)
    exclude = (groups[:, None] == groups[None, :]) & ~own
    logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, torch.arange(b, device=queries.device))


class Views:
    """Makes augmented, composed, normalised inputs from a :class:`TrainingSet`."""

    def __init__(
        self,
        data: TrainingSet,
        channels: tuple[str, ...],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        max_shift_px: float = 1.5,
        print_jitter: float = 1.0,
        device: torch.device | None = None,
    ) -> None:
        self.data = data
        self.device = device or torch.device("cpu")
        self.channels = channels
        self.mean = mean
        self.std = std
        self.max_shift_px = max_shift_px
        self.print_jitter = print_jitter
        self.masks = torch.from_numpy(data.masks)
        self.prints = torch.from_numpy(data.prints)

    def view(
        self, idx: np.ndarray, gen: torch.Generator, print_idx: np.ndarray | None = None
    ) -> torch.Tensor:
        """Input for items ``idx`` (with the prints of ``print_idx`` when given)."""
        t_idx = torch.from_numpy(idx)
        p_idx = t_idx if print_idx is None else torch.from_numpy(print_idx)
        m, p = augment_pair(self.masks[t_idx], self.prints[p_idx], gen, self.max_shift_px, self.print_jitter)
        x = normalise(compose_channels(m, p, self.channels), self.mean, self.std)
        return x.to(self.device).contiguous(memory_format=torch.channels_last)

    def labels(self, values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values).to(self.device)


class TrainingObjective(nn.Module):
    """Base of the objectives: owns the views, samples epochs, computes a batch loss."""

    def __init__(self, views: Views) -> None:
        super().__init__()
        self.views = views
        self.data = views.data

    def view(
        self, idx: np.ndarray, gen: torch.Generator, print_idx: np.ndarray | None = None
    ) -> torch.Tensor:
        return self.views.view(idx, gen, print_idx)

    def batches(self, batch_size: int, rng: np.random.Generator) -> list[Batch]:
        """One epoch: every item once, in random order; a last partial batch smaller than
        half a batch is dropped (its loss would not be comparable)."""
        order = rng.permutation(len(self.data))
        keep = max(2, batch_size // 2)
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size) if len(order) - i >= keep]

    def loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


class ContrastiveObjective(TrainingObjective):
    """Batches hold ``batch_size // 2`` anchors and as many partners."""

    def __init__(self, views: Views, net: nn.Module, temperature: float = 0.1) -> None:
        super().__init__(views)
        self.net = net
        self.temperature = temperature
        self._members: dict[int, np.ndarray] = {}
        for g in np.unique(self.data.variant_keys):
            self._members[int(g)] = np.flatnonzero(self.data.variant_keys == g)
        self._rng = np.random.default_rng(0)

    def batches(self, batch_size: int, rng: np.random.Generator) -> list[Batch]:
        self._rng = rng
        return super().batches(max(2, batch_size // 2), rng)

    def _partners(self, anchors: np.ndarray) -> np.ndarray:
        out = np.empty_like(anchors)
        for i, a in enumerate(anchors):
            members = self._members[int(self.data.variant_keys[a])]
            others = members[members != a]
            out[i] = others[self._rng.integers(others.size)] if others.size else a
        return out

    def loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        partners = self._partners(batch)
        x = torch.cat([self.view(batch, gen), self.view(partners, gen)], dim=0)
        z = self.net(x)
        groups = self.views.labels(self.data.variant_keys[batch])
        loss = nt_xent(z[: len(batch)], z[len(batch) :], groups, self.temperature)
        return loss, {"nt_xent": float(loss.detach())}


class CrossView(nn.Module):
    """The view tokens and the loss of the ``crossview`` objective.

    A single view keeps one channel of the normalised input and fills every other
    channel with its view token, one learnable constant per filled channel. The
    difference channel is filled in both single views: it carries the mask too.
    """

    def __init__(self, channels: tuple[str, ...], temperature: float) -> None:
        super().__init__()
        self.channels = channels
        self.temperature = temperature
        self.mask_view_token = nn.Parameter(torch.zeros(len(channels) - 1))
        self.print_view_token = nn.Parameter(torch.zeros(len(channels) - 1))

    def mask_view(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, S, S)`` input -> the same with only the mask channel left."""
        return self._keep_only(x, "mask", self.mask_view_token)

    def print_view(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, S, S)`` input -> the same with only the print channel left."""
        return self._keep_only(x, "print", self.print_view_token)

    def _keep_only(self, x: torch.Tensor, channel: str, token: torch.Tensor) -> torch.Tensor:
        k = self.channels.index(channel)
        fill = torch.cat([token[:k], token.new_zeros(1), token[k:]]).to(x.dtype).view(1, -1, 1, 1)
        keep = torch.zeros(len(self.channels), dtype=torch.bool, device=x.device)
        keep[k] = True
        out = torch.where(keep.view(1, -1, 1, 1), x, fill)
        return out.contiguous(memory_format=torch.channels_last)

    def loss(
        self, z_full: torch.Tensor, z_mask: torch.Tensor, z_print: torch.Tensor, groups: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Symmetric mask<->print InfoNCE plus half of (full->mask + full->print)."""
        t = self.temperature
        parts = {
            "mask_print": 0.5 * (info_nce(z_mask, z_print, groups, t) + info_nce(z_print, z_mask, groups, t)),
            "full_mask": info_nce(z_full, z_mask, groups, t),
            "full_print": info_nce(z_full, z_print, groups, t),
        }
        total = parts["mask_print"] + 0.5 * (parts["full_mask"] + parts["full_print"])
        return total, parts


class CrossViewObjective(TrainingObjective):
    """Batches of ``batch_size`` items, each seen as its full, mask-only and print-only view
    (three independent augmentations), in one forward pass so BatchNorm sees all three."""

    def __init__(self, views: Views, net: nn.Module, temperature: float = 0.1) -> None:
        super().__init__(views)
        self.net = net
        self.crossview = CrossView(views.channels, temperature)

    def loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x = torch.cat(
            [
                self.view(batch, gen),
                self.crossview.mask_view(self.view(batch, gen)),
                self.crossview.print_view(self.view(batch, gen)),
            ]
        )
        z_full, z_mask, z_print = self.net(x).split(len(batch))
        groups = self.views.labels(self.data.variant_keys[batch])
        total, parts = self.crossview.loss(z_full, z_mask, z_print, groups)
        return total, {k: float(v.detach()) for k, v in parts.items()}


class ContrastiveCrossViewObjective(ContrastiveObjective):
    """``contrastive`` plus ``crossview_weight`` times ``crossview`` on the anchors.

    One forward pass over anchors, partners and the anchors' mask-only and print-only
    views; the anchors' full views serve both losses.
    """

    def __init__(
        self, views: Views, net: nn.Module, temperature: float = 0.1, crossview_weight: float = 0.5
    ) -> None:
        super().__init__(views, net, temperature)
        self.crossview = CrossView(views.channels, temperature)
        self.crossview_weight = crossview_weight

    def loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        partners = self._partners(batch)
        x = torch.cat(
            [
                self.view(batch, gen),
                self.view(partners, gen),
                self.crossview.mask_view(self.view(batch, gen)),
                self.crossview.print_view(self.view(batch, gen)),
            ]
        )
        z_anchor, z_partner, z_mask, z_print = self.net(x).split(len(batch))
        groups = self.views.labels(self.data.variant_keys[batch])
        variant = nt_xent(z_anchor, z_partner, groups, self.temperature)
        crossview, parts = self.crossview.loss(z_anchor, z_mask, z_print, groups)
        total = variant + self.crossview_weight * crossview
        return total, {"nt_xent": float(variant.detach())} | {k: float(v.detach()) for k, v in parts.items()}


class SupervisedObjective(TrainingObjective):
    def __init__(
        self, views: Views, net: ResNetEmbedder, group_scale: float = 16.0, group_margin: float = 0.2
    ) -> None:
        super().__init__(views)
        self.net = net
        feat = net.feature_dim
        n_fam = len(self.data.vocab.get("family", []))
        n_def = len(self.data.vocab.get("defect", []))
        n_grp = int(self.data.groups.max()) + 1
        self.family_head = nn.Linear(feat, n_fam) if n_fam >= 2 else None
        self.defect_head = nn.Linear(feat, n_def) if n_def >= 2 else None
        self.consistency_head = nn.Linear(feat, 1)
        self.group_weight = nn.Parameter(torch.randn(n_grp, net.dim) * 0.01)
        self.group_scale = group_scale
        self.group_margin = group_margin

    def _embed(self, feats: torch.Tensor) -> torch.Tensor:
        z = self.net.head(feats) if self.net.head is not None else feats
        return F.normalize(z, dim=1)

    def loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        n = len(batch)
        q = max(1, n // 4)
        # mismatched prints: another item's print, taken from a different layout when possible
        donors = np.roll(batch[:q], 1) if q > 1 else batch[:1]
        x = torch.cat([self.view(batch, gen), self.view(batch[:q], gen, print_idx=donors)], dim=0)
        feats_all = self.net.features(x)
        feats = feats_all[:n]
        families = self.views.labels(self.data.families[batch])
        defects = self.views.labels(self.data.defects[batch])
        target = self.views.labels(self.data.groups[batch])
        parts: dict[str, torch.Tensor] = {}
        if self.family_head is not None:
            parts["family"] = F.cross_entropy(self.family_head(feats), families, ignore_index=NO_LABEL)
        if self.defect_head is not None:
            parts["defect"] = F.cross_entropy(self.defect_head(feats), defects, ignore_index=NO_LABEL)
        z = self._embed(feats)
        cos = z @ F.normalize(self.group_weight, dim=1).T
        margin = F.one_hot(target, cos.shape[1]).float() * self.group_margin
        parts["group"] = F.cross_entropy(self.group_scale * (cos - margin), target)
        matched = self.consistency_head(feats_all[:q]).squeeze(1)
        mismatched = self.consistency_head(feats_all[n:]).squeeze(1)
        differs = self.views.labels(self.data.groups[donors] != self.data.groups[batch[:q]]).float()
        logits = torch.cat([matched, mismatched])
        labels = torch.cat([torch.ones_like(differs), 1.0 - differs])
        parts["consistency"] = 0.5 * F.binary_cross_entropy_with_logits(logits, labels)
        parts = {k: v for k, v in parts.items() if torch.isfinite(v)}
        total = torch.stack(list(parts.values())).sum()
        return total, {k: float(v.detach()) for k, v in parts.items()}


class AutoencoderObjective(TrainingObjective):
    def __init__(self, views: Views, net: ConvAutoEncoder) -> None:
        super().__init__(views)
        self.net = net

    def loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x = self.view(batch, gen)
        loss = F.mse_loss(self.net.reconstruct(x), x)
        return loss, {"mse": float(loss.detach())}
