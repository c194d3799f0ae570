"""Serve application ``uploads`` (``serve.uploads.app:build_app``, deployment ``UploadsAPI``, route ``/v1/uploads``)."""
