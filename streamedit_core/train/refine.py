"""Training the pixel refiner (`refiner.py`) of a finished, distilled model.

The refiner corrects what the sampler releases, so it learns from that: the model edits
benchmark-style pairs of the train split (train photos, train wordings; never validation or
test) exactly as it streams at inference (6 steps, history window), and the refiner is fitted
to map (its output, the source) to the ground-truth edit under the prompt, in pixels. The
DiT, the STLE and the prompt pooling stay frozen: a refiner that reads the prompt
(`RefinerConfig.prompt`) reads its view of it (`StreamEditModel.refiner_prompt`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import RefinerConfig, VocabularyConfig
from ..data import synthetic
from ..model.vocabulary import NO_EDIT
from .config import TrainConfig
from ..data.fillers import filler_variants

log = logging.getLogger(__name__)

# Weight of the frame-to-frame term of the refiner's loss (see train_refiner).
TEMPORAL_WEIGHT = 2.0


@dataclass
class RefinerData:
    """Pairs as frames [P, T, 3, H, W] in [0, 1] and the refiner's view of their prompts [P, D];
    optionally the view of other wordings of each pair's edit (see `train_refiner`'s
    `wording_swap`): `wordings[family[i]]` [W, D] holds those of pair i."""
    output: Tensor  # the model's streamed output (without a refiner)
    source: Tensor
    target: Tensor
    pooled: Tensor
    wordings: tuple[Tensor, ...] = ()
    family: Tensor | None = None  # [P] long: each pair's index into `wordings`


def family_wordings(families: list[str], fillers: int = TrainConfig.filler_variants,
                    seed: int = TrainConfig.seed) -> dict[str, list[str]]:
    """Every train wording of each family, and `fillers` filler variants of each (as the DiT's
    training reads them, `TrainConfig.filler_variants`): the refiner's pairs carry one wording
    each, about 30 of a family's 40 train wordings and none of their filler variants."""
    out = {}
    for family in families:
        base = list(synthetic.split_paraphrases(family, "train"))
        variants = filler_variants(base, fillers, seed) if fillers else {}
        out[family] = base + [v for p in base for v in variants.get(p, ())]
    return out


@torch.no_grad()
def refiner_data(model, text_encoder, pairs, wordings: dict[str, list[str]] | None = None,
                 batch: int = 64) -> RefinerData:
    """Stream every pair through `model` (refiner off) and keep what the refiner learns from;
    with `wordings` (family -> prompts, e.g. `family_wordings`), also the refiner's view of
    each of those, for every family that a pair has."""
    from ..stream.edit import edit_clip  # the inference path itself, not a copy of it
    refiner, model.refiner = model.refiner, None
    try:
        outputs = [edit_clip(model, text_encoder, p.source, p.prompt) for p in pairs]
    finally:
        model.refiner = refiner
    pooled = torch.cat([model.refiner_prompt(text_encoder.encode([p.prompt])).float() for p in pairs])

    def frames(clips: list[Tensor]) -> Tensor:  # [T, H, W, 3] each -> [P, T, 3, H, W]
        return torch.stack([c.float().cpu() for c in clips]).permute(0, 1, 4, 2, 3).contiguous()

    data = RefinerData(frames(outputs), frames([p.source for p in pairs]),
                       frames([p.target for p in pairs]), pooled.cpu())
    if wordings is not None:
        names = list(dict.fromkeys(p.family for p in pairs))
        missing = [f for f in names if not wordings.get(f)]
        if missing:
            raise ValueError(f"no wordings given for the pairs' families {missing}")
        def views(ws: list[str]) -> Tensor:  # [W, D], encoded in batches
            return torch.cat([model.refiner_prompt(text_encoder.encode(ws[i:i + batch])).float().cpu()
                              for i in range(0, len(ws), batch)])

        data.wordings = tuple(views(wordings[f]) for f in names)
        data.family = torch.tensor([names.index(p.family) for p in pairs])
    return data


def train_refiner(model, data: RefinerData, steps: int, *, pairs_per_step: int = 8,
                  frames_per_pair: int = 4, temporal_weight: float = TEMPORAL_WEIGHT,
                  prompt_noise: float = 0.0, wording_swap: float = 0.0, lr: float = 2e-3,
                  seed: int = 0, log_every: int = 250) -> list[float]:
    """Fit `model.refiner` to `data` with AdamW and a cosine rate; returns the loss at every
    step. The rest of the model is not touched. Each step sees `frames_per_pair` consecutive
    frames of each pair, and the loss is the pixel MSE plus `temporal_weight` times the MSE of
    the change between consecutive frames against the ground truth's: a refiner that sees one
    frame at a time otherwise sharpens an edit it is unsure of into a shimmer (test split,
    pooled flicker: 1.20 without the term and 1.10 with a weight of 2 in probes on run 18's
    outputs; 1.25 and 1.18 in runs 20 and 21; see docs/demo-model.md, The pixel refiner).
    `prompt_noise` adds Gaussian noise of that many times the prompt's RMS to each pair's
    pooled prompt (0: none; 0.3 on the demo model: no net gain on test, docs/demo-model.md).
    `wording_swap` is the chance that a pair is read, in a step, under another wording of its
    edit drawn from `data.wordings` instead of its own: what the refiner learns of the prompt
    then comes from every wording of the train split, not from one per pair."""
    if steps < 1:
        raise ValueError(f"refiner steps must be >= 1, got {steps}")
    if temporal_weight < 0 or prompt_noise < 0:
        raise ValueError(f"refiner temporal weight and prompt noise must be >= 0, "
                         f"got {temporal_weight}, {prompt_noise}")
    if not 0 <= wording_swap <= 1 or (wording_swap and data.family is None):
        raise ValueError(f"wording_swap must be in [0, 1] and needs data with wordings "
                         f"(refiner_data(..., wordings=...)), got {wording_swap}")
    if model.refiner is None:
        raise ValueError(f"model {model.config.name!r} has no refiner (refiner width 0); give it one "
                         "with with_refiner() first")
    net = model.refiner.float().train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    n_pairs, n_frames = data.source.shape[:2]
    if not 1 <= frames_per_pair <= n_frames:
        raise ValueError(f"frames_per_pair must be in 1..{n_frames} (the frames of a pair), got {frames_per_pair}")
    losses, start = [], time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        pi = torch.randint(n_pairs, (pairs_per_step, 1), generator=gen)
        first = torch.randint(n_frames - frames_per_pair + 1, (pairs_per_step, 1), generator=gen)
        fi = first + torch.arange(frames_per_pair)  # [pairs, frames]: consecutive
        out, src, tgt = (x[pi, fi] for x in (data.output, data.source, data.target))  # [p, f, 3, H, W]
        pooled = None
        if model.config.refiner.prompt:
            pooled = data.pooled[pi[:, 0]]  # [pairs, D]
            if wording_swap:
                swap = torch.rand(pairs_per_step, generator=gen) < wording_swap
                pooled = pooled.clone()
                for j in swap.nonzero()[:, 0].tolist():
                    bank = data.wordings[int(data.family[pi[j, 0]])]
                    pooled[j] = bank[int(torch.randint(len(bank), (), generator=gen))]
            if prompt_noise:
                # In units of the prompt's RMS, which is what the refiner reads (it normalises it).
                rms = pooled.pow(2).mean(-1, keepdim=True).sqrt()
                pooled = pooled + prompt_noise * rms * torch.randn(pooled.shape, generator=gen)
            pooled = pooled.repeat_interleave(frames_per_pair, 0)
        pred = net(out.flatten(0, 1), src.flatten(0, 1), pooled).unflatten(0, out.shape[:2])
        loss = F.mse_loss(pred, tgt)
        if temporal_weight and frames_per_pair > 1:
            loss = loss + temporal_weight * F.mse_loss(pred.diff(dim=1), tgt.diff(dim=1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            recent = losses[-log_every:]
            log.info("refiner step %d/%d: loss %.5f (mean of the last %d), %.0f s", step + 1, steps,
                     sum(recent) / len(recent), len(recent), time.perf_counter() - start)
    net.eval()
    return losses


# Training wordings of each edit that a vocabulary lists in the model's config (`with_vocabulary`).
@torch.no_grad()
def with_vocabulary(model, text_encoder, families: list[str] | None = None, *, keep_anchors: bool = False):
    """`model` with a vocabulary of edits (`VocabularyConfig`, model/vocabulary.py) that its refiner
    reads every prompt through: for each family (default: every one, sorted), the anchor is the
    mean of the refiner's view of its train wordings, and NO_EDIT's is the view of the empty
    prompt. The config lists every train wording (NO_EDIT's: `synthetic.NO_EDIT_WORDINGS`), whose
    sentence vectors prompts are matched to, and the out-of-vocabulary threshold: the lowest
    similarity of a validation wording (of the families and of NO_EDIT) to its nearest train
    wording, so that no validation wording is flagged. The weights are untouched; a vocabulary
    the model had is replaced (build it again after refitting the refiner), its anchors kept
    with `keep_anchors` (same edits: rebuilding the rest changes nothing the refiner reads)."""
    from ..model import StreamEditModel
    if model.refiner is None or not model.config.refiner.prompt:
        raise ValueError("with_vocabulary needs a model whose refiner reads the prompt "
                         f"(refiner config {model.config.refiner})")
    families = sorted(synthetic.FAMILIES) if families is None else list(families)
    if not families or NO_EDIT in families:
        raise ValueError(f"need one or more edit families, not {NO_EDIT!r}, got {families}")
    wordings = [synthetic.split_paraphrases(f, "train") for f in families]
    views = [model.refiner_prompt(text_encoder.encode(list(w))).mean(0) for w in wordings]
    views.append(model.refiner_prompt(text_encoder.null(1))[0])
    wordings.append(synthetic.NO_EDIT_WORDINGS["train"])
    cfg = VocabularyConfig(edits=(*families, NO_EDIT), wordings=tuple(wordings))
    new = StreamEditModel(model.config.replace(vocabulary=cfg), device=model.device, dtype=model.dtype)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("vocabulary.")}
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected or missing != ["vocabulary.anchors"]:
        raise ValueError(f"with_vocabulary: state mismatch (missing {missing}, unexpected {unexpected})")
    if keep_anchors:
        if model.vocabulary is None or model.vocabulary.edits != cfg.edits:
            raise ValueError(f"keep_anchors needs a vocabulary of the edits {list(cfg.edits)}, the model has "
                             f"{None if model.vocabulary is None else list(model.vocabulary.edits)}")
        views = list(model.vocabulary.anchors)
    new.vocabulary.anchors.copy_(torch.stack(views))
    validation = [w for f in families for w in synthetic.split_paraphrases(f, "validation")]
    validation += synthetic.NO_EDIT_WORDINGS["validation"]
    similar = new.vocabulary.similarities(text_encoder.sentence_vectors(validation),
                                          new.vocabulary.wording_vectors(text_encoder))
    threshold = float(similar.max(-1).values.min())
    return with_threshold(new, max(threshold, 0.0))


def with_threshold(model, threshold: float):
    """`model` (with a vocabulary) with another out-of-vocabulary threshold; all else as it was."""
    from ..model import StreamEditModel
    cfg = dataclasses.replace(model.config.vocabulary, threshold=math.floor(threshold * 1e4) / 1e4)
    new = StreamEditModel(model.config.replace(vocabulary=cfg), device=model.device, dtype=model.dtype)
    new.load_state_dict(model.state_dict())
    return new.eval()


def with_refiner(model, cfg: RefinerConfig):
    """`model` with a fresh (identity) refiner of `cfg` if it has none: a model trained before
    refiners keeps every weight and gains one."""
    from ..model import StreamEditModel
    if model.refiner is not None:
        return model
    if not cfg.width:
        raise ValueError("with_refiner needs a refiner config of width > 0")
    new = StreamEditModel(model.config.replace(refiner=cfg), device=model.device, dtype=model.dtype)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("refiner.") for k in missing):
        raise ValueError(f"with_refiner: state mismatch (missing {missing}, unexpected {unexpected})")
    return new.eval()
