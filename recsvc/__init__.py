"""recsvc: real-time product recommendations.

The shared core of the trainer (``recsvc.training``, folder ``training/``) and the server
(``recsvc.serving``, folder ``serving/``); it imports neither: settings
(:mod:`recsvc.config`), errors (:mod:`recsvc.errors`), the event vocabulary
(:mod:`recsvc.events`), the artifact format (:mod:`recsvc.artifact`), the FAISS index
(:mod:`recsvc.index`), the ranking core (:mod:`recsvc.model`, :mod:`recsvc.ranking`,
:mod:`recsvc.neighbors`, :mod:`recsvc.foldin`), the Redis layer (:mod:`recsvc.store`),
the typed client (:mod:`recsvc.client`), the wire contract (:mod:`recsvc.v1`, generated)
and the ``recsvc`` command (:mod:`recsvc.cli`). Importing this package imports nothing
else: the client-only install has grpcio and protobuf only.
"""

__version__ = "0.1.0"
