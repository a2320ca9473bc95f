"""recsvc: real-time product recommendations.

The shared core of the trainer (``training/``) and the server (``serving/``):
settings (:mod:`recsvc.config`), errors (:mod:`recsvc.errors`), the artifact format
(:mod:`recsvc.artifact`), the FAISS index (:mod:`recsvc.index`), the ranking core
(:mod:`recsvc.model`, :mod:`recsvc.ranking`, :mod:`recsvc.foldin`), the Redis store
(:mod:`recsvc.store`) and the wire contract (:mod:`recsvc.v1`, generated).
"""

__version__ = "0.1.0"
