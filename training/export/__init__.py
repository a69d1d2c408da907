"""4. Export to ONNX: the portable reference graph in standard operators (``standard_graph``) and
the fused graphs the engine serves (``fused_graph``), each checked (``parity``) before
``reference.export_onnx`` or ``fused_graph.build_variant`` writes it into the model folder."""
