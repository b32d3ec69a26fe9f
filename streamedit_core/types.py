"""Small value types shared between modules (kept here to avoid import cycles)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TextEmbedding:
    """A text ensemble's output, before the DiT's per-member projections.

    states[i]: [B, L_i, d_i] float token states of member i (padded to its max_tokens)
    masks[i]:  [B, L_i] bool, True where a token is real. An all-False row is the null
               (unconditional) prompt; the DiT must handle it (it keeps learned register tokens).
    """
    states: tuple[Tensor, ...]
    masks: tuple[Tensor, ...]

    @property
    def batch_size(self) -> int:
        return self.states[0].shape[0]

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "TextEmbedding":
        return TextEmbedding(tuple(s.to(device=device, dtype=dtype) for s in self.states),
                             tuple(m.to(device=device) for m in self.masks))

    def token_means(self) -> tuple[Tensor, ...]:
        """Each member's mean state over its real tokens, [B, d_i]; zeros for the null prompt
        (padding never counts, whatever it holds)."""
        means = []
        for s, m in zip(self.states, self.masks):
            w = m[..., None].to(s.dtype)  # [B, L, 1]
            means.append((s * w).sum(1) / w.sum(1).clamp(min=1))
        return tuple(means)

    def repeat(self, batch: int) -> "TextEmbedding":
        """Expand a batch-1 embedding to `batch` rows."""
        if self.batch_size != 1:
            raise ValueError(f"repeat() expects a batch of 1, got {self.batch_size}")
        return TextEmbedding(tuple(s.expand(batch, -1, -1) for s in self.states),
                             tuple(m.expand(batch, -1) for m in self.masks))

    @staticmethod
    def null(member_configs, batch: int = 1) -> "TextEmbedding":
        """The unconditional embedding of an ensemble whose members are `member_configs`
        (`TextMemberConfig`s): zero states [batch, max_tokens, dim], every mask False."""
        return TextEmbedding(tuple(torch.zeros(batch, c.max_tokens, c.dim) for c in member_configs),
                             tuple(torch.zeros(batch, c.max_tokens, dtype=torch.bool)
                                   for c in member_configs))

    @staticmethod
    def cat(items: "list[TextEmbedding]") -> "TextEmbedding":
        """Concatenate along the batch (e.g. [cond, uncond] for CFG)."""
        n = len(items[0].states)
        return TextEmbedding(tuple(torch.cat([e.states[i] for e in items]) for i in range(n)),
                             tuple(torch.cat([e.masks[i] for e in items]) for i in range(n)))

    def blend(self, other: "TextEmbedding", w: float) -> "TextEmbedding":
        """(1-w)*self + w*other, token by token; a token is real if it is real in either.

        Used for smooth prompt switches: w goes 0 -> 1 over the transition frames. Padded
        positions hold zeros, so blending with a shorter prompt fades its tokens in or out.
        """
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"blend weight must be in [0, 1], got {w}")
        if len(self.states) != len(other.states):
            raise ValueError("cannot blend embeddings of different ensembles "
                             f"({len(self.states)} vs {len(other.states)} members)")
        states = []
        for a, b in zip(self.states, other.states):
            if a.shape != b.shape:
                raise ValueError(f"cannot blend member states of shapes {tuple(a.shape)} and {tuple(b.shape)}")
            states.append(torch.lerp(a, b.to(a.dtype), w))
        masks = tuple(ma | mb for ma, mb in zip(self.masks, other.masks))
        return TextEmbedding(tuple(states), masks)


def resolve_device(name: str | None) -> torch.device:
    """The torch device a user named (None: cuda if available, else cpu); ValueError for a name
    torch does not know and for a CUDA device this machine does not have."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"unknown device {name!r}; expected cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here (no GPU or no "
                             f"driver; this torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"device {name!r} is not supported; expected cpu, cuda or cuda:N")
    return device
