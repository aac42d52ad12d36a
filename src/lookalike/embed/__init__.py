"""Images → L2-normalised embeddings: the model registry (models), preprocessing (transforms),
the resumable extraction pipeline (extract) and embedding one query like its gallery (query)."""
