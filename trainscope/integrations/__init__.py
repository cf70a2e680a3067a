"""Callbacks that record a run from inside a training framework (optional dependencies).

    from trainscope.integrations.transformers import TrainscopeCallback   # Hugging Face Trainer
    from trainscope.integrations.lightning import TrainscopeCallback      # Lightning (or pytorch_lightning)

Each module imports its framework only when it is imported itself; the core install needs neither.
"""
