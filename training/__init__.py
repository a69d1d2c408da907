"""Training-side tools for model folders: build a tiny test model, export to ONNX, keep the card.

Nothing heavy is imported here: torch and transformers (and optimum, for ``--exporter optimum``)
are imported inside the functions that need them, so ``import training`` (and the pytest plugin)
stays cheap.
"""
