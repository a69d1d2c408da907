"""5. Evaluation and benchmark: quality on held-out transcripts next to a retrieval baseline
(``evaluate``), speed and memory against transformers and CTranslate2 (``bench``), and the
transformers generator they both compare against (``reference``)."""
