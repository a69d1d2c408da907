"""6. The demo: a synthetic shop's support corpus (``corpus``) and the default model trained on it
once and kept in the cache (``model``)."""
