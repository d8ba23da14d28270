"""u1lib: the engine behind the SenseNova-U1 LoRA pipeline (model, data, cache, training, sampling, report)."""

__version__ = "0.1.0"
