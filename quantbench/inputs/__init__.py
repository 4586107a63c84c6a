"""What a run reads: the model (local path, hub id or the embedded SmolLM2) and the corpus windows."""
