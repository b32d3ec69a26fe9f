"""Training (`python -m streamedit_core {train,distill,train-demo}`): nothing is imported here, so that
importing the package costs nothing.

config.py     TrainConfig / DataConfig (the JSON stage files in configs/train/)
data.py       JSONL manifest of mp4 pairs, latent shards, the position-based batch order
textbank.py   prompt embeddings encoded once (and the text cache file)
partitions.py ASW partition schemes (noise levels of a training window)
losses.py     SCM (flow + temporal consistency), STLE reconstruction and stream consistency
distill.py    Hierarchical Progressive Distillation (levels, CFG teacher target)
dist.py       torchrun process group, DDP / FSDP2 wrapping, full <-> sharded tensors
trainer.py    the loop: steps, accumulation, EMA, checkpoint/resume, metrics, export
cli.py        main_train / main_distill
recipe.py     the demo recipe (`train-demo`): budgeted stages, the refiner, fp16 export, eval
"""
