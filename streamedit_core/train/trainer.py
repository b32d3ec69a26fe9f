"""The training loop: STLE reconstruction, DiT with the SCM objective over ASW partitions, and
Hierarchical Progressive Distillation; one process, or many under torchrun (DDP / FSDP2).

Reproducibility: every random draw of a step comes from a generator seeded by (seed, step) or
(seed, data position), never from a global stream. So the samples a step sees and their noise
do not depend on the number of ranks or on the micro-batch split (a 2-process run matches a
1-process run of the same global batch), and a resumed run only needs the step number, the
weights and the optimizer state (global RNG states are saved and restored as well).

Run state: `out_dir/train_state.safetensors` (full weights, EMA, optimizer moments, step, RNG
states, config; safetensors, no pickle), `out_dir/model.safetensors` (a StreamEdit checkpoint
the samplers load), `out_dir/metrics.jsonl` (one line per logged step).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..model import StreamEditModel
from ..types import TextEmbedding
from . import dist as D
from .config import TrainConfig, resume_mismatch
from .data import LatentShardDataset, ManifestDataset, collate, iterate_batches
from .distill import segment_levels, teacher_velocity
from .losses import (edit_energy, edit_weights, flow_loss, pixel_channel_weights, reconstruction_loss,
                     squared_error, stream_consistency_loss, temporal_consistency_loss)
from .partitions import window_levels
from ..data.synthetic import SyntheticEditDataset
from ..data.fillers import filler_variants
from ..model.text import RandomText
from .textbank import CachedText, TextBank

log = logging.getLogger(__name__)

STATE_FILE = "train_state.safetensors"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"


def generator(*key) -> torch.Generator:
    """A CPU generator seeded by a tuple (e.g. (seed, "step", 12)): draws independent of history."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


class STLEObjective(nn.Module):
    """The STLE's training forward as one module call (so DDP / FSDP see a single forward)."""

    def __init__(self, stle: nn.Module) -> None:
        super().__init__()
        self.stle = stle

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        latents = self.stle.encode(frames, check_finite=False)
        recon = self.stle.decode(latents, clamp=False, check_finite=False)
        stride = self.stle.temporal_stride
        late = (self.stle.encode(frames[:, :, stride:], check_finite=False)
                if frames.shape[2] >= 2 * stride else latents[:, :, 1:])
        return recon, latents, late


def training_prompts(cfg: TrainConfig, dataset) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """Every prompt a run feeds the text bank (its data set's, plus their filler variants when
    cfg.filler_words > 0) and the filler variants of each data-set prompt."""
    prompts = list(dataset.all_prompts()) if hasattr(dataset, "all_prompts") else []
    fillers = filler_variants(prompts, cfg.filler_variants, cfg.seed) if cfg.filler_words > 0 else {}
    return prompts + [v for vs in fillers.values() for v in vs], fillers


def build_text(cfg: TrainConfig, model_config):
    """The run's text encoder (cache file, random stand-in, MiniLM or an ensemble folder),
    checked against the model config's text members."""
    members = model_config.dit.text_members
    if cfg.text_cache:
        cached = CachedText(cfg.text_cache)
        if tuple(cached.member_configs) != tuple(members):
            raise ValueError(f"text cache {cfg.text_cache!r} holds members {cached.member_configs}, "
                             f"the model expects {members}")
        return cached
    if cfg.text == "random":
        return RandomText(members)
    from ..model.text import TextEnsemble
    try:
        return TextEnsemble.for_model(model_config, None if cfg.text == "minilm" else cfg.text)
    except ValueError as e:
        raise ValueError(f"text={cfg.text!r}: {e}") from e


def build_dataset(cfg: TrainConfig):
    d = cfg.data
    if d.kind == "synthetic":
        return SyntheticEditDataset(d.split, frames=d.frames, size=d.size, seed=cfg.seed,
                                    identity_fraction=d.identity_fraction, length=d.length,
                                    underexposed_fraction=d.underexposed_fraction,
                                    underexposed_families=d.underexposed_families,
                                    footage_fraction=d.footage_fraction)
    if d.kind == "manifest":
        return ManifestDataset(d.path, frames=d.frames, size=d.size, seed=cfg.seed)
    return LatentShardDataset(d.path, seed=cfg.seed)


class Trainer:
    """One training run. `run()` trains to cfg.steps (resuming if asked) and exports the model.

    `dataset` / `text_encoder` override the ones the config names (tests, custom data).
    """

    def __init__(self, cfg: TrainConfig, *, dataset=None, text_encoder=None) -> None:
        self.cfg = cfg
        self.info = D.setup(cfg.device)
        self.bf16 = cfg.precision == "bf16" or cfg.precision == "auto" and D.native_bf16(self.info.device)
        if cfg.precision != "fp32":
            log.info("precision %s: %s on %s", cfg.precision, "bf16 autocast" if self.bf16 else "fp32",
                     self.info.device)
        if cfg.precision == "bf16" and not D.native_bf16(self.info.device):
            log.warning("precision bf16: %s has no bf16 hardware, so autocast is emulated and much "
                        "slower than fp32; use precision 'auto' or 'fp32'", self.info.device)
        self.micro, self.accum = cfg.micro_for(self.info.world)
        self.out_dir = Path(cfg.out_dir)
        if self.info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        random.seed(cfg.seed), np.random.seed(cfg.seed % 2**32), torch.manual_seed(cfg.seed)
        dev = self.info.device

        # 1. Model: a checkpoint (later stages, the distillation teacher) or a seeded preset.
        if cfg.init_checkpoint:
            self.model = load_checkpoint(cfg.init_checkpoint, device=dev, dtype=torch.float32)
        else:
            self.model = StreamEditModel.from_preset(cfg.preset, seed=cfg.seed, device=dev)
        self.model.requires_grad_(False).eval()
        self.dataset = dataset if dataset is not None else build_dataset(cfg)
        if cfg.task == "stle" and not cfg.init_checkpoint:  # from scratch: start at PCA
            init_linear_path(self.model.stle, self.dataset, cfg.pca_samples)
        # Text: the prompts of the data set are encoded once, here.
        self.text = None
        if cfg.task != "stle":
            encoder = text_encoder if text_encoder is not None else build_text(cfg, self.model.config)
            prompts, self.fillers = training_prompts(cfg, self.dataset)
            self.text = TextBank(encoder, [""] + prompts)
        # DiT losses per latent channel: None (all the same) or pixel_weighting's [C] weights.
        self.channel_weight = None
        if cfg.task != "stle" and cfg.pixel_weighting > 0:
            self.channel_weight = pixel_channel_weights(self.model.stle.latent_std, cfg.pixel_weighting).to(dev)
        # edit_weighting's yardstick: the mean edit energy of the data's first items (the same
        # items on every rank and on resume).
        self.mean_edit_energy = self._mean_edit_energy() if cfg.edit_weighting > 0 else None
        if cfg.edit_map_steps:  # before any wrapping: plain modules, identical on every rank
            self.fit_edit_map()

        # Trained module, its parallel wrapper, optimizer and EMA.
        if cfg.task == "stle":
            self.trained: nn.Module = self.model.stle
            objective: nn.Module = STLEObjective(self.model.stle)
            units: list[nn.Module] = []
        else:
            self.trained = self.model.dit
            if cfg.grad_checkpointing:  # a run-time choice: not written into the model config
                self.model.dit.cfg = dataclasses.replace(self.model.dit.cfg, grad_checkpointing=True)
            objective = self.model.dit
            units = [*self.model.dit.outer_in, *self.model.dit.inner, *self.model.dit.outer_out]
        self.teacher = None
        if cfg.task == "distill":  # frozen copy; the student starts as the teacher
            self.teacher = copy.deepcopy(self.model.dit).eval()
        self.trained.requires_grad_(True).train()
        self.wrapped = D.wrap(objective, cfg.parallel, self.info, units)
        self.params = [(n, p) for n, p in self.trained.named_parameters()]
        # Fused: one kernel over all tensors instead of a Python loop over them. On the 2-core
        # CPU the demo DiT's update took 11 ms instead of 50, of a 380 ms step.
        self.optimizer = torch.optim.AdamW([p for _, p in self.params], lr=cfg.lr,
                                           weight_decay=cfg.weight_decay, betas=(0.9, 0.999),
                                           fused=True)
        self.ema = ({n: p.detach().clone().float() for n, p in self.params} if cfg.ema_decay > 0 else None)

        self.step = 0
        self.round = -1  # distillation round the teacher belongs to

    # --- objectives -----------------------------------------------------------------------
    def _latents(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(source, target) latents [B, C, t, h, w] float32: from shards, or the frozen STLE."""
        dev = self.info.device
        if "source_latents" in batch:
            return batch["source_latents"].to(dev), batch["target_latents"].to(dev)
        with torch.no_grad():
            both = torch.cat([batch["source"], batch["target"]]).to(dev)
            z = self.model.stle.encode(both).float()
        return z.chunk(2)

    def _mean_edit_energy(self, items: int = 64, chunk: int = 8) -> float:
        """Mean edit energy (losses.edit_energy) of the dataset's first `items` pairs, encoded
        `chunk` at a time (pixel data goes through the STLE)."""
        n = min(items, len(self.dataset))
        energies = []
        for lo in range(0, n, chunk):
            src, x0 = self._latents(collate([self.dataset[p] for p in range(lo, min(lo + chunk, n))]))
            energies.append(edit_energy(src, x0, self.channel_weight))
        mean = float(torch.cat(energies).mean())
        log.info("edit weighting: mean edit energy %.4g over the first %d pairs", mean, n)
        if mean <= 0:
            raise ValueError(f"edit_weighting needs edits, but the first {n} pairs of the data are all "
                             "identity pairs (target == source)")
        return mean

    def _sample_weights(self, src: Tensor, x0: Tensor) -> Tensor:
        """Per-sample loss weights [B, 1] (TrainConfig.edit_weighting; all ones when off)."""
        if self.mean_edit_energy is None:
            return src.new_ones(src.shape[0], 1)
        energy = edit_energy(src, x0, self.channel_weight)
        return edit_weights(energy, self.mean_edit_energy, self.cfg.edit_weighting)[:, None]

    def _window(self, batch: dict, positions: list[int], step: int):
        """Per-step partition and history, per-sample noise, levels and prompt dropout."""
        cfg = self.cfg
        src, x0 = self._latents(batch)
        b, _, n_frames = src.shape[:3]
        g = generator(cfg.seed, "step", step)
        scheme = cfg.partitions[int(torch.randint(len(cfg.partitions), (1,), generator=g))]
        history = int(torch.randint(min(cfg.history_max, n_frames - 1) + 1, (1,), generator=g))
        eps, u, drop = [], [], []
        for p in positions:
            gs = generator(cfg.seed, "sample", p)
            eps.append(torch.randn(src.shape[1:], generator=gs))
            u.append(torch.rand(n_frames, generator=gs))
            drop.append(bool(torch.rand((), generator=gs) < cfg.prompt_dropout))
        eps = torch.stack(eps).to(src.device)
        t = window_levels(scheme, history, n_frames, torch.stack(u), cfg.shift).to(src.device)  # [B, T]
        # Prompt dropout trains the null prompt as "no edit" (target = source): the null
        # embedding means identity everywhere (docs/internals.md), and CFG then pushes from
        # "unchanged" towards the edit.
        prompts = ["" if d else pr for d, pr in zip(drop, batch["prompt"])]
        if cfg.filler_words > 0:
            prompts = [self._with_filler(pr, p) for pr, p in zip(prompts, positions)]
        keep = torch.tensor([not d for d in drop], device=src.device).view(b, 1, 1, 1, 1)
        x0 = torch.where(keep, x0, src)
        text = self.text.lookup(prompts).to(src.device)
        if cfg.text_noise > 0:
            text = self._noisy_text(text, positions)
        return src, x0, eps, t, text, prompts

    def _with_filler(self, prompt: str, position: int) -> str:
        """With probability cfg.filler_words (seeded by the sample), one of the prompt's filler
        variants; else the prompt. The null prompt stays null."""
        variants = self.fillers.get(prompt)
        g = generator(self.cfg.seed, "filler", position)
        if not variants or float(torch.rand((), generator=g)) >= self.cfg.filler_words:
            return prompt
        return variants[int(torch.randint(len(variants), (1,), generator=g))]

    def _noisy_text(self, text: TextEmbedding, positions: list[int]) -> TextEmbedding:
        """`text` with seeded Gaussian noise of text_noise x RMS on each sample's real tokens
        (padding and the null prompt stay exact)."""
        states = []
        for i, (s, m) in enumerate(zip(text.states, text.masks)):
            noise = torch.stack([torch.randn(s.shape[1:], generator=generator(self.cfg.seed, "text", i, p))
                                 for p in positions]).to(s.device, s.dtype)  # [B, L, dim]
            w = m[..., None].to(s.dtype)  # [B, L, 1]
            rms = ((s * w).pow(2).sum() / (w.sum() * s.shape[-1]).clamp(min=1)).sqrt()
            states.append(s + self.cfg.text_noise * rms * noise * w)
        return TextEmbedding(tuple(states), text.masks)

    def _autocast(self):
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16,
                              enabled=self.bf16)

    def dit_loss(self, batch: dict, positions: list[int], step: int) -> tuple[Tensor, dict]:
        """SCM: flow matching on the in-flight frames + lambda * temporal consistency."""
        cfg = self.cfg
        src, x0, eps, t, text, _ = self._window(batch, positions, step)
        tt = t.view(*t.shape[:1], 1, t.shape[1], 1, 1)  # [B, 1, T, 1, 1]
        x_t = (1 - tt) * x0 + tt * eps  # history frames (t = 0) are the clean latents
        with self._autocast():
            v = self.wrapped(x_t, t, src, text).float()
        in_flight = (t > 0).float() * self._sample_weights(src, x0)  # [B, T]
        # x0 weighting: t * (v error) = x0 error. Only the velocity term: the temporal term
        # already compares predicted clean latents.
        weight = in_flight * t.float() ** 2 if cfg.loss_weighting == "x0" else in_flight
        fm = flow_loss(v, eps - x0, weight, self.channel_weight)
        tc = temporal_consistency_loss(x_t - tt * v, x0, in_flight,
                                       src if cfg.motion_compensation else None, self.channel_weight)
        return fm + cfg.temporal_weight * tc, {"flow": fm.detach(), "temporal": tc.detach()}

    def fit_edit_map(self) -> float:
        """Fit the fresh DiT's linear edit map alone (cfg.edit_map_steps; see TrainConfig): the
        x0 residual target - source from the map of the source, read from the prompt by the
        text pooling and its MLP, with the DiT stage's prompt dropout and text noise. Every rank
        fits the same batches from the same seed, so the ranks agree without talking. Returns
        the last loss.

        Why: the map is the most direct path from a prompt to a global edit, and fitted alone it
        gets in minutes most of what the DiT of run 5 learned in an hour (21.3 dB on all 60 test
        pairs). Measured 2026-11-30 on demo run 4's latents, first 26 test pairs: 2,000 map steps
        and no DiT step, 20.4 dB; 1,400 DiT steps from a zero map (10 minutes), 18.8 dB; the
        same steps after the fit, 20.65 dB.
        A resumed run fits too, and then loads its saved state over the result."""
        cfg, dit = self.cfg, self.model.dit
        if dit.edit_map is None:
            raise ValueError("edit_map_steps > 0 needs a DiT with an edit map (DiTConfig.edit_map_rank > 0)")
        readers = (dit.text_pool, dit.text_pool_score, dit.edit_map)  # the prompt's path to the map
        params = [p for module in readers if module is not None for p in module.parameters()]
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=cfg.edit_map_lr, weight_decay=cfg.weight_decay)
        n, batch_size, t0 = cfg.edit_map_steps, cfg.edit_map_batch, time.perf_counter()
        for step in range(n):
            for group in opt.param_groups:
                group["lr"] = scheduled_lr(cfg.edit_map_lr, step, n, min(50, n // 10), cosine=True)
            (positions, batch), = iterate_batches(self.dataset, step, batch_size, batch_size, 0, 1)
            src, x0, _, _, text, _ = self._window(batch, positions, step)
            loss = squared_error(dit.edit_map_residual(src, text), x0 - src, self.channel_weight).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        last = float(loss.detach())
        log.info("edit map fitted alone: %d steps of %d samples in %.0f s, loss %.4f",
                 n, batch_size, time.perf_counter() - t0, last)
        return last

    def stle_loss(self, batch: dict, positions: list[int], step: int) -> tuple[Tensor, dict]:
        frames = torch.cat([batch["source"], batch["target"]]).to(self.info.device)
        with self._autocast():
            recon, latents, late = self.wrapped(frames)
        rec, parts = reconstruction_loss(recon, frames, self.cfg.ssim_weight)
        cons = stream_consistency_loss(late, latents)
        return rec + self.cfg.stream_weight * cons, {**parts, "stream": cons.detach()}

    def distill_loss(self, batch: dict, positions: list[int], step: int) -> tuple[Tensor, dict]:
        """Progressive distillation, segment-wise over the ASW partition: each in-flight chunk
        sits on a level of the student's grid; the target velocity is the teacher's two steps
        (with CFG in the first round) from that level to the student's next level."""
        cfg = self.cfg
        teacher_steps, _ = self.current_round(step)
        cfg_scale = cfg.teacher_cfg if teacher_steps == cfg.teacher_steps else 1.0
        src, x0, eps, t_draw, text, _ = self._window(batch, positions, step)
        t_a, t_m, t_c = segment_levels(t_draw, teacher_steps, cfg.shift)
        hist = t_draw == 0
        x_a = (1 - t_a[:, None, :, None, None]) * x0 + t_a[:, None, :, None, None] * eps
        null = self.text.null(src.shape[0]).to(src.device)
        target = teacher_velocity(self.teacher, x_a, t_a, t_m, t_c, src, text, null, cfg_scale)
        with self._autocast():
            v = self.wrapped(x_a, t_a, src, text).float()
        loss = flow_loss(v, target, (~hist).float() * self._sample_weights(src, x0), self.channel_weight)
        return loss, {"distill": loss.detach(), "teacher_steps": float(teacher_steps)}

    def current_round(self, step: int) -> tuple[int, int]:
        """(teacher steps, student steps) of `step`; the teacher moves on at round boundaries."""
        rounds = self.cfg.distill_rounds()
        per = max(1, -(-self.cfg.steps // len(rounds)))
        r = min(step // per, len(rounds) - 1)
        if r != self.round:
            if self.round >= 0 or r > 0:  # a new round: the student so far is the next teacher
                self._load_teacher_from_student()
            self.round = r
        return rounds[r]

    def _load_teacher_from_student(self) -> None:
        full = {n: D.full(p) for n, p in self.params}
        for n, p in self.teacher.named_parameters():
            p.data.copy_(full[n])

    # --- one optimizer step ---------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Linear warmup over warmup_steps, then constant or (lr_decay "cosine") down to 0 at `steps`."""
        cfg = self.cfg
        return scheduled_lr(cfg.lr, step, cfg.steps, cfg.warmup_steps, cfg.lr_decay == "cosine")

    def train_step(self) -> dict:
        cfg, step = self.cfg, self.step
        loss_fn = {"stle": self.stle_loss, "dit": self.dit_loss, "distill": self.distill_loss}[cfg.task]
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        self.optimizer.zero_grad(set_to_none=True)
        total, parts = 0.0, {}
        batches = iterate_batches(self.dataset, step, cfg.global_batch, self.micro, self.info.rank,
                                  self.info.world)
        for m, (positions, batch) in enumerate(batches):
            last = m == self.accum - 1
            sync = (self.wrapped.no_sync() if hasattr(self.wrapped, "no_sync") and not last
                    else contextlib.nullcontext())
            with sync:
                loss, extra = loss_fn(batch, positions, step)
                (loss / self.accum).backward()
            total += float(loss.detach()) / self.accum
            for k, v in extra.items():
                parts[k] = parts.get(k, 0.0) + float(v) / self.accum
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_([p for _, p in self.params], cfg.grad_clip)
            parts["grad_norm"] = float(D.full(norm)) if D._is_dtensor(norm) else float(norm)
        self.optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                for n, p in self.params:
                    self.ema[n].lerp_(p.detach().float(), 1 - cfg.ema_decay)
        self.step += 1
        return {"loss": D.all_mean(total, self.info), **parts}

    # --- run ------------------------------------------------------------------------------
    def run(self, resume: bool = False,
            after_step: Callable[["Trainer"], None] | None = None) -> Path:
        """Train until cfg.steps; returns the exported model checkpoint's path (rank 0's).

        after_step(trainer) runs after every step and may replace trainer.cfg with one of another
        step count (a time-budgeted run re-planning from its measured pace; the schedule follows
        self.cfg.steps, so do it early, while the rate is still near its peak; under DDP every
        rank must make the same change)."""
        cfg = self.cfg
        if resume:
            self.load_state(self.out_dir / STATE_FILE)
        show = cfg.progress and self.info.is_main and sys.stderr.isatty()
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not show, desc=f"train {cfg.task}",
                   dynamic_ncols=True)
        metrics = self.out_dir / METRICS_FILE
        t0, samples = time.perf_counter(), 0
        try:
            while self.step < self.cfg.steps:
                out = self.train_step()
                if after_step is not None:
                    after_step(self)
                    cfg = self.cfg
                    bar.total = cfg.steps
                samples += cfg.global_batch
                bar.update(1)
                bar.set_postfix(loss=f"{out['loss']:.4f}")
                if self.info.is_main and (self.step % max(cfg.log_every, 1) == 0 or self.step == cfg.steps):
                    dt = time.perf_counter() - t0
                    row = {"step": self.step, "lr": self.lr_at(self.step - 1), **out,
                           "samples_per_s": samples / max(dt, 1e-9), "memory_mb": _memory_mb(self.info.device),
                           "skipped_rows": getattr(self.dataset, "skipped", 0)}
                    with metrics.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    t0, samples = time.perf_counter(), 0
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save_state()
        finally:
            bar.close()
        self.save_state()
        return self.export()

    # --- checkpoints ----------------------------------------------------------------------
    def _full_model_state(self, use_ema: bool) -> dict[str, Tensor]:
        """The whole StreamEditModel's state, full tensors on CPU (collective under FSDP)."""
        prefix = "stle." if self.cfg.task == "stle" else "dit."
        state = {}
        trained = {prefix + n: (D.full(self.ema[n]) if use_ema else None) for n, _ in self.params}
        for n, t in self.trained.state_dict().items():
            key = prefix + n
            state[key] = trained[key] if trained.get(key) is not None else D.full(t)
        for n, t in self.model.state_dict().items():
            if not n.startswith(prefix):
                state[n] = t.detach().to("cpu", copy=True)
        return state

    def save_state(self) -> None:
        """Write train_state.safetensors (rank 0 writes; every rank joins the gathers)."""
        tensors = {f"model.{k}": v for k, v in self._full_model_state(False).items()}
        if self.ema is not None:
            tensors.update({f"ema.{n}": D.full(v) for n, v in self.ema.items()})
        for n, p in self.params:
            st = self.optimizer.state.get(p, {})
            for k, v in st.items():
                tensors[f"optim.{n}.{k}"] = D.full(v) if torch.is_tensor(v) else torch.tensor(float(v))
        if self.teacher is not None:
            tensors.update({f"teacher.{n}": p.detach().cpu().clone() for n, p in self.teacher.named_parameters()})
        tensors["rng.torch"] = torch.get_rng_state()
        if not self.info.is_main:
            return
        np_state = np.random.get_state()
        meta = {"train_config": self.cfg.to_json(), "model_config": self.model.config.to_json(),
                "step": str(self.step), "round": str(self.round),
                "rng.python": json.dumps(random.getstate(), default=list),
                "rng.numpy": json.dumps([np_state[0], np_state[1].tolist(), *np_state[2:]]),
                "format": "streamedit-train-1"}
        path = self.out_dir / STATE_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
        log.info("saved training state at step %d to %s", self.step, path)

    def load_state(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: no training state {str(path)!r}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise ValueError(f"cannot resume: {str(path)!r} is not a readable training state: {e}") from e
        if meta.get("format") != "streamedit-train-1":
            raise ValueError(f"cannot resume: {str(path)!r} is not a StreamEdit training state")
        diff = resume_mismatch(json.loads(meta["train_config"]), self.cfg)
        if meta.get("model_config") != self.model.config.to_json():
            diff.append(f"model config: checkpoint {meta.get('model_config')} vs now {self.model.config.to_json()}")
        if diff:
            raise ValueError(f"cannot resume from {str(path)!r}: it was written by another config: "
                             + "; ".join(diff))
        prefix = "stle." if self.cfg.task == "stle" else "dit."
        for n, t in self.model.state_dict().items():
            if not n.startswith(prefix):
                t.copy_(tensors[f"model.{n}"])
        for n, t in self.trained.state_dict().items():
            D.assign(t, tensors[f"model.{prefix}{n}"])
        if self.ema is not None:
            for n in self.ema:
                self.ema[n] = D.like(self.ema[n], tensors[f"ema.{n}"])
        for n, p in self.params:
            keys = [k for k in tensors if k.startswith(f"optim.{n}.") and k.count(".") == n.count(".") + 2]
            if keys:
                state = {}
                for k in keys:
                    name = k.rsplit(".", 1)[1]
                    # the fused update keeps its step count on the parameter's device
                    state[name] = (tensors[k].to(p.device, torch.float32) if name == "step"
                                   else D.like(p, tensors[k]))
                self.optimizer.state[p] = state
        if self.teacher is not None:
            for n, p in self.teacher.named_parameters():
                p.data.copy_(tensors[f"teacher.{n}"])
        self.step, self.round = int(meta["step"]), int(meta.get("round", -1))
        torch.set_rng_state(tensors["rng.torch"])
        py = json.loads(meta["rng.python"])
        random.setstate((py[0], tuple(py[1]), py[2]))
        nps = json.loads(meta["rng.numpy"])
        np.random.set_state((nps[0], np.array(nps[1], dtype=np.uint32), *nps[2:]))
        log.info("resumed from %s at step %d", path, self.step)

    def export(self) -> Path:
        """Write model.safetensors (EMA weights when EMA is on); a distilled model is saved as a
        CFG-free sampler at target_steps. STLE runs set the latent statistics first."""
        state = self._full_model_state(self.ema is not None)
        path = self.out_dir / MODEL_FILE
        if not self.info.is_main:
            return path
        config = self.model.config
        if self.cfg.task == "distill":
            config = config.replace(sampler=dataclasses.replace(
                config.sampler, steps=self.cfg.target_steps, cfg_scale=1.0))
        model = StreamEditModel(config)
        model.load_state_dict(state)
        if self.cfg.task == "stle":
            set_latent_statistics(model.stle, self.dataset, self.cfg)
        meta = {"train_config": self.cfg.to_json(), "step": self.step}
        save_checkpoint(model, path, extra_metadata=meta)
        return path


@torch.no_grad()
def scheduled_lr(peak: float, step: int, steps: int, warmup: int, cosine: bool) -> float:
    """Linear warmup over `warmup` steps, then constant or (cosine) down to 0 at `steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if cosine:
        progress = (step - warmup) / max(1, steps - warmup)
        return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return peak


def init_linear_path(stle: nn.Module, dataset, samples: int) -> None:
    """PCA start for a new STLE (see `STLE.init_linear_path`), fitted on the first `samples`
    data items (TrainConfig.pca_samples), sources and edited targets both (the STLE codes the
    edited video too)."""
    items = [dataset[p] for p in range(min(samples, len(dataset)))]
    frames = torch.stack([i[k] for i in items for k in ("source", "target")])
    stle.init_linear_path(frames.to(stle.latent_std.device))


@torch.no_grad()
def set_latent_statistics(stle: nn.Module, dataset, cfg: TrainConfig, samples: int = 16) -> None:
    """Per-channel mean/std of the raw latents over `samples` data items, into the STLE's
    buffers, so the DiT sees roughly unit-variance latents (reconstruction is unaffected)."""
    frames = torch.stack([dataset[p]["source"] for p in range(min(samples, len(dataset)))])
    z = stle.encode(frames) * stle.latent_std.view(1, -1, 1, 1, 1) + stle.latent_mean.view(1, -1, 1, 1, 1)
    stle.latent_mean.copy_(z.mean(dim=(0, 2, 3, 4)))
    stle.latent_std.copy_(z.std(dim=(0, 2, 3, 4)).clamp(min=1e-4))


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS (Linux: KiB)
