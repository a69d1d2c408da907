"""3. Fitting: fine-tuning with transformers' Trainer (``train``), its progress bar and report, and
the random tiny models that tests and from-scratch runs start from (``tiny``)."""
