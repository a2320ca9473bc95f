"""The gRPC server role: reads published artifacts, never writes them.

Empty until the serving issue lands; the ranking it will call is
:class:`recsvc.ranking.Ranker`, already exercised by ``recsvc evaluate``.
"""
