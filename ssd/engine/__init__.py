"""Training and inference engine: the training loop (`train_loop`), checkpoints (`checkpoint`), metric
writers (`writers`) and inference over a dataset (`inference`).

Modules are imported explicitly (`from ssd.engine.train_loop import train`) so a reader sees where each name
comes from.
"""
