"""Training and inference engine: the training loop (`train_loop`), checkpoints (`checkpoint`), metric
writers (`writers`), inference over a dataset (`inference`), the backend the network runs in (`runtime`:
PyTorch or ONNX Runtime) and int8 quantization of an exported network (`quantize`).

Modules are imported explicitly (`from ssd.engine.train_loop import train`) so a reader sees where each name
comes from.
"""
