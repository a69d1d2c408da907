"""Training: from a support team's transcripts to a model folder the engine serves.

The subpackages are the pipeline, in order::

    transcripts/   read and clean: JSONL, help-desk CSV and plain text in, PII redacted
    dataset/       render with the chat template, tokenize, mask the loss to the agent's turns
    fitting/       fine-tune (transformers Trainer), report; tiny random models for tests
    export/        the ONNX graphs: the portable reference and the fused ones, parity-checked
    evaluation/    quality on held-out transcripts, and the speed benchmark
    demo/          the synthetic shop corpus and the default model trained on it

Beside them: ``card`` writes ``card.json``, ``commands`` registers the `chatbot` commands that
need these tools, ``pytest_plugin`` gives channel authors tiny model folders as fixtures.

Nothing heavy is imported here: torch and transformers (and optimum, for ``--exporter optimum``)
are imported inside the functions that need them, so ``import training`` (and the pytest plugin)
stays cheap.
"""
