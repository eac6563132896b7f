"""Train stage: pretraining (loop.py: AdamW, accumulation, schedules, per-language bits per byte, atomic
checkpoints, exact resume, DDP/FSDP2 under torchrun) and supervised fine-tuning (sft.py) on packed shards, with
loss and throughput plots (plot.py) and checkpoint export."""
