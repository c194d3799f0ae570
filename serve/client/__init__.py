"""The client of a Sluice server: the library (:class:`Client`) and the ``sluice`` command (``serve/client/cli.py``).

    from serve.client import Client

    with Client("http://127.0.0.1:8000", "acme") as client:
        client.upload(["docs/"], prefix="kb")
        hits = client.search("pump gasket", top_k=5)["results"]
"""

from serve.client.api import ApiAnswerError, SluiceClient
from serve.client.library import Client
from serve.client.uploader import FileResult

__all__ = ["ApiAnswerError", "Client", "FileResult", "SluiceClient"]
