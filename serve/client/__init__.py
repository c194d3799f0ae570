"""The ``sluice`` command-line client (``serve/client/cli.py:main``) and its HTTP client (:class:`SluiceClient`)."""
