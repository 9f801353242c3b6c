"""Retrieval: ingest, embeddings, USearch + Whoosh index versions, hybrid search, rerank, evaluation."""
