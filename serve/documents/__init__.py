"""Serve application ``documents``: documents, their versions, restore, delete, and dead letters (route ``/v1``)."""
