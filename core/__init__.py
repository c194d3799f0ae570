"""Shared adapters and domain types of Sluice.

``core`` imports libraries only (never Ray Serve or Ray Data): settings, errors, ids, the domain types, and one
adapter per external system (S3 objects, the PostgreSQL catalog, the Redis cache, the Qdrant vector store).
"""
