"""Small helpers shared by the engine: torch.distributed (`dist`) and logging setup (`logging`)."""
